"""Checkpoint -> shipped model: `<id>.safetensors` + `<id>.json` model card (via the core's save_model).

The card says what the model was trained on (and, for pseudo pairs, that the thick slices were
simulated and that it never saw RPLHR-CT), the schedule, the steps and minutes, the hardware and
the metrics passed in (evaluation summaries). The export is loaded back before it is reported done.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from VolumetricSRLib.atomic import write_text_atomically
from VolumetricSRLib.geometry import voxel_spacing
from VolumetricSRLib.io.volume_io import read_geometry
from VolumetricSRLib.models.architectures import config_from_dict
from VolumetricSRLib.models.weights import DEFAULT_MARKER, load_model, save_model

from .adversarial import trained_label
from .checkpoints import network_from_checkpoint, state_digest
from .config import SCHEDULE_KEYS
from .curves import logged_seconds, read_log


def training_minutes(state: dict, checkpoint: Path) -> float | None:
    """Minutes of training up to the checkpoint: stored in it, else summed from the run's log.csv."""
    if "train_seconds" in state:
        return state["train_seconds"] / 60
    log = checkpoint.parent / "log.csv"
    if not log.exists():
        return None
    rows = [row for row in read_log(log) if row["step"] <= state["step"]]
    return logged_seconds(rows) / 60 if rows else None


def slice_spacing_mm(path: str | Path) -> float | None:
    """Slice spacing of a volume file (header only for NIfTI); None when it cannot be read now."""
    try:
        _, affine = read_geometry(path)
    except (ValueError, OSError):
        return None
    return round(float(voxel_spacing(affine)[2]), 4)


def describe_data(cfg: dict) -> dict:
    """The training and validation data, in words a reader of the card can check."""
    ratio = config_from_dict(cfg["model"]).ratio
    if cfg.get("rplhr_root"):
        return {
            "kind": "real thick/thin pairs (RPLHR-CT layout)",
            "root": cfg["rplhr_root"],
            "split": "train",
            "validation": cfg.get("val_volumes") or "val split",
        }
    return {
        "kind": "pseudo pairs from thin-only CT (not RPLHR-CT, no real thick reconstructions)",
        "thin_volumes": [Path(p).name for p in cfg["train_volumes"]],
        "thin_slice_mm": [slice_spacing_mm(p) for p in cfg["train_volumes"]],
        "sampling_weights": cfg.get("train_weights") or "equal",
        "thick_slices": (
            f"simulated: each thick slice is the {cfg.get('slab', 'box')}-weighted mean of {ratio} "
            f"consecutive thin slices, placed at their centre in world space"
            + (f", plus Gaussian noise of {cfg['noise_hu']} HU" if cfg.get("noise_hu") else "")
        ),
        "validation_volumes": [Path(p).name for p in cfg.get("val_volumes", [])],
        **(
            {"inplane_pairs": f"{cfg['inplane_pairs']:.0%} of the pairs along an in-plane axis"}
            if cfg.get("inplane_pairs")
            else {}
        ),
    }


def default_description(
    cfg: dict, steps: int, minutes: float | None, hardware: str, phases: int = 1, partial: bool = False
) -> str:
    data = describe_data(cfg)
    network = config_from_dict(cfg["model"])
    ratio = network.ratio
    when = f"{steps} steps" + (f" ({minutes:.1f} minutes on {hardware})" if minutes is not None else "")
    if phases > 1:
        when += f" in {phases} phases (each run continuing from the previous run's weights)"
    if partial:
        when += (
            ", a phase taking an earlier network's weights only where names and shapes matched (its "
            "fresh tensors are listed in the card's phases)"
        )
    if "thin_volumes" in data:
        volumes = ", ".join(
            name + ("" if mm is None else f" ({mm:g} mm slices)")
            for name, mm in zip(data["thin_volumes"], data["thin_slice_mm"], strict=True)
        )
        source = (
            f"pseudo pairs made from {len(data['thin_volumes'])} CT volumes ({volumes}): the thick "
            f"slices were simulated by averaging {ratio} thin slices; it was not trained on RPLHR-CT "
            "nor on real thick reconstructions"
        )
    else:
        source = f"real thick/thin pairs from {data['root']}"
    return f"{trained_label(network, cfg)}, x{ratio} along the slice axis, trained for {when} on {source}."


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    id: str,
    name: str,
    description: str = "",
    metrics: dict | None = None,
    hardware: str | None = None,
    minutes: float | None = None,
    thick_spacing_mm: float = 5.0,
    overwrite: bool = False,
    set_default: bool = False,
) -> Path:
    """Write the model files of a checkpoint into out_dir and load them back; returns the card's path."""
    checkpoint = Path(checkpoint)
    network, state = network_from_checkpoint(checkpoint)
    cfg = state["config"]
    if minutes is None:
        minutes = training_minutes(state, checkpoint)
    if hardware is None:
        hardware = "; ".join(state.get("hardware", [])) or "not recorded"
    check_metrics_belong_to(network, metrics or {}, checkpoint)
    best = state.get("best_psnr", -math.inf)
    schedule = {key: cfg[key] for key in SCHEDULE_KEYS if key in cfg}
    lineage = json.loads(state.get("lineage", "[]"))
    steps = int(state["step"]) + sum(phase["steps"] for phase in lineage)
    this_phase = {
        "checkpoint": checkpoint.name,
        "steps": int(state["step"]),
        "minutes": None if minutes is None else round(minutes, 1),
        "hardware": list(state.get("hardware", [])),
        "schedule": schedule,
    }
    if minutes is not None:
        minutes += sum(phase["minutes"] for phase in lineage)
    training = {
        "data": describe_data(cfg),
        "schedule": schedule,
        "steps": steps,
        "minutes": None if minutes is None else round(minutes, 1),
        "hardware": hardware,
        "checkpoint": checkpoint.name,
        "best_validation_psnr": best if math.isfinite(best) else None,
        "config": cfg,
    }
    if lineage:  # a run continued from earlier runs' weights: each phase, oldest first
        training["phases"] = [*lineage, this_phase]
    card_path = save_model(
        network,
        out_dir,
        id=id,
        name=name,
        trained=True,
        description=description
        or default_description(
            cfg, steps, minutes, hardware, len(lineage) + 1, any("partial" in phase for phase in lineage)
        ),
        thick_spacing_mm=thick_spacing_mm,
        training=training,
        metrics=metrics or {},
        overwrite=overwrite,
    )
    loaded, _ = load_model(card_path)
    if state_digest(loaded) != state_digest(network):
        raise RuntimeError(f"{card_path} does not load back to the checkpoint's weights")
    if set_default:
        write_text_atomically(Path(out_dir) / DEFAULT_MARKER, id + "\n")
    return card_path


def check_metrics_belong_to(network: nn.Module, metrics: dict, checkpoint: Path) -> None:
    """Refuse evaluation summaries that were computed for other weights than the network's."""
    digest = state_digest(network)
    for label, summary in metrics.items():
        evaluated = summary.get("model", {})
        if evaluated.get("weights_digest") != digest:
            raise ValueError(
                f"the {label} metrics were computed for other weights "
                f"({evaluated.get('label', 'no model recorded')}), not for {checkpoint}: evaluate this "
                f"checkpoint with `volumetricsr-train evaluate --model {checkpoint}` and pass that summary"
            )


def read_metrics(items: list[str]) -> dict:
    """`LABEL=summary.json` items (evaluate's summaries) -> {LABEL: summary}."""
    metrics = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"metrics {item!r} is not LABEL=PATH (e.g. test=eval/test/summary.json)")
        metrics[label] = json.loads(Path(path).read_text(encoding="utf-8"))
    return metrics

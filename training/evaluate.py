"""Evaluation on the RPLHR-CT protocol: the model against linear and cubic B-spline interpolation.

Every method is scored on exactly the same thin slices of the same cases in one run: HU clipped to
[-1024, 2048] and scaled to [0, 1], the first and last 5 thin slices left out, PSNR per volume
(peak 1), SSIM per axial slice (11 x 11 Gaussian window, sigma 1.5) averaged over the slices
(`VolumetricSRLib.metrics.score_volume`). The model runs through the full sliding-window
predictor. Cases are pseudo pairs (thick simulated from a thin volume) or real pairs (matched by
world position, see `volumetricsr_training.rplhr`). Per-case differences are tested with a one-sided Wilcoxon
signed-rank test (model greater than each baseline).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon
from torch import nn

from VolumetricSRLib.atomic import write_text_atomically
from VolumetricSRLib.geometry import voxel_spacing
from VolumetricSRLib.inference.interpolation import interpolate_slices
from VolumetricSRLib.inference.predictor import PredictOptions, super_resolve_hu
from VolumetricSRLib.intensity import HU_MAX, HU_MIN, hu_to_unit, unit_to_hu
from VolumetricSRLib.io.volume_io import SUPPORTED, read_volume, volume_stem
from VolumetricSRLib.metrics import PROTOCOL_TRIM, detailed_scores, score_volume
from VolumetricSRLib.models.weights import load_model

from .adversarial import trained_label
from .checkpoints import network_from_checkpoint, state_digest
from .config import TrainConfig
from .pseudo_pairs import make_pseudo_pair
from .rplhr import DatasetError, check_split, load_pair

METHODS = ("model", "cubic", "linear")
BASELINES = ("linear", "cubic")
METHOD_LABELS = {
    "nearest": "nearest neighbour",
    "linear": "linear interpolation",
    "cubic": "cubic B-spline interpolation",
    "lanczos": "Lanczos-3 interpolation",
}
DETAILED_SCORES = (
    "psnr_between",
    "ssim_coronal",
    "ssim_sagittal",
    "psnr_lung",
    "psnr_soft_tissue",
    "psnr_bone",
)
"""metrics.detailed_scores, beside the protocol's PSNR and SSIM on the same slices."""
CASE_FIELDS = (
    "case",
    "method",
    "psnr",
    "ssim",
    *DETAILED_SCORES,
    "thick_slices",
    "scored_slices",
    "thick_spacing_mm",
    "source",
)
PROTOCOL = (
    f"HU clipped to [{HU_MIN:g}, {HU_MAX:g}] and scaled to [0, 1]; first and last {PROTOCOL_TRIM} thin "
    "slices left out; PSNR per volume (peak 1); SSIM per axial slice (11 x 11 Gaussian, sigma 1.5, "
    "K1 0.01, K2 0.03) averaged over the slices"
)
SIGNIFICANCE = 0.001


@dataclass
class EvalCase:
    """A thick volume, the thin truth on its thin grid (both HU) and where it came from."""

    name: str
    thick: np.ndarray
    thick_affine: np.ndarray
    truth: np.ndarray
    truth_affine: np.ndarray
    ratio: int
    source: str


@dataclass
class LoadedModel:
    """A network ready to evaluate, and what to call it."""

    network: nn.Module
    label: str
    window: tuple[float, float]
    info: dict


# data ------------------------------------------------------------------------------------------
def thin_volume_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files given directly, the volume files (.nii.gz, .nii, .nrrd, ...) inside given folders, and a
    folder without volume files as one DICOM series (read_volume says why when it is none)."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.name.lower().endswith(SUPPORTED))
            paths += inside or [path]
        elif path.exists():
            paths.append(path)
        else:
            raise ValueError(f"thin volume not found: {path}")
    if not paths:
        raise ValueError("no thin volumes given")
    return paths


def pseudo_cases(
    paths: Iterable[str | Path], ratio: int, slab: str = "box", noise_hu: float = 0.0, seed: int = 0
) -> Iterator[EvalCase]:
    """Pseudo pairs: each thin volume with its simulated thick scan (plus Gaussian noise of `noise_hu`
    HU, drawn from `seed` and the case's position in the list, when given)."""
    for n, path in enumerate(paths):
        volume = read_volume(path)
        pair = make_pseudo_pair(volume.array.astype(np.float32), volume.affine, ratio, slab)
        thick = pair.thick
        if noise_hu:
            noise = np.random.default_rng([seed, n]).normal(0.0, noise_hu, thick.shape)
            thick = (thick + noise).astype(np.float32)
        yield EvalCase(
            volume_stem(path),
            thick,
            pair.thick_affine,
            pair.truth,
            pair.truth_affine,
            ratio,
            f"pseudo pair ({slab} slab of {ratio} thin slices"
            + (f", noise {noise_hu:g} HU" if noise_hu else "")
            + f") from {Path(path).name}",
        )


def real_cases(root: str | Path, split: str, ratio: int, min_slices: int) -> Iterator[EvalCase]:
    """Real pairs of one RPLHR-CT split, matched by world position; DatasetError if any case does not fit."""
    report = check_split(root, split, ratio, min_slices)
    if not report.ok:
        raise DatasetError(report.text())
    for checked in report.pairs:
        pair = load_pair(checked)
        yield EvalCase(
            pair.case,
            pair.thick,
            pair.thick_affine,
            pair.thin,
            pair.thin_affine,
            pair.ratio,
            f"real pair {split}/{pair.case}",
        )


# models ----------------------------------------------------------------------------------------
def load_for_evaluation(path: str | Path, device: str = "cpu") -> LoadedModel:
    """A model file (.safetensors / .json / bundled id) or a training checkpoint (.pt, weights only)."""
    path = Path(path)
    if path.suffix == ".pt":
        network, state = network_from_checkpoint(path)
        info = {"checkpoint": str(path), "step": int(state["step"]), "weights_digest": state_digest(network)}
        return LoadedModel(
            network.to(device).eval(),
            f"{trained_label(network.cfg, state['config'])} ({path.name}, step {info['step']})",
            (HU_MIN, HU_MAX),
            info,
        )
    network, card = load_model(path, device=device)
    info = {"id": card.id, "sha256": card.sha256, "weights_digest": state_digest(network)}
    label = trained_label(network.cfg, (card.training or {}).get("config"))
    return LoadedModel(network, f"{label} ({card.id})", card.window, info)


# scoring ---------------------------------------------------------------------------------------
def predictions(model: LoadedModel, case: EvalCase, options: PredictOptions) -> dict[str, np.ndarray]:
    """Thin HU volumes of the model and both baselines for one case, all on the case's thin grid."""
    if model.network.cfg.ratio != case.ratio:
        raise ValueError(f"{case.name}: the pair has ratio {case.ratio}, the model {model.network.cfg.ratio}")
    thin, affine = super_resolve_hu(
        model.network, case.thick, case.thick_affine, options, window=model.window
    )
    if thin.shape != case.truth.shape or not np.allclose(affine, case.truth_affine, atol=1e-3):
        raise RuntimeError(f"{case.name}: the prediction's grid does not lie on the truth's grid")
    out = {"model": thin}
    for method in BASELINES:
        out[method] = interpolate_hu(case.thick, case.ratio, method, model.window)
    return out


def interpolate_hu(thick: np.ndarray, ratio: int, method: str, window: tuple[float, float]) -> np.ndarray:
    """An interpolation baseline in HU: the thick HU clipped to the window, interpolated, mapped back."""
    return unit_to_hu(interpolate_slices(hu_to_unit(thick, window), ratio, method), window)


def score_case(model: LoadedModel, case: EvalCase, options: PredictOptions) -> list[dict]:
    """One row per method: the protocol's PSNR and SSIM on the same slices."""
    rows = []
    for method, thin in predictions(model, case, options).items():
        scores = score_volume(thin, case.truth)
        rows.append(
            {
                "case": case.name,
                "method": method,
                "psnr": scores["psnr"],
                "ssim": scores["ssim"],
                **detailed_scores(thin, case.truth, case.ratio),
                "thick_slices": case.thick.shape[0],
                "scored_slices": case.truth.shape[0] - 2 * PROTOCOL_TRIM,
                "thick_spacing_mm": round(float(voxel_spacing(case.thick_affine)[2]), 4),
                "source": case.source,
            }
        )
    return rows


def one_sided_wilcoxon(model: np.ndarray, baseline: np.ndarray) -> float:
    """p-value of 'model greater than baseline' over paired cases (1.0 when they never differ)."""
    differences = np.asarray(model, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    if not np.any(differences):
        return 1.0
    return float(wilcoxon(differences, alternative="greater").pvalue)


def summarize(rows: list[dict]) -> dict:
    """Mean +- std (population) per method, Wilcoxon p-values and per-case margins over cubic."""
    cases = list(dict.fromkeys(row["case"] for row in rows))
    table = {(row["case"], row["method"]): row for row in rows}
    values = {
        method: {
            metric: np.array([table[case, method][metric] for case in cases]) for metric in ("psnr", "ssim")
        }
        for method in METHODS
    }
    n = len(cases)
    summary: dict = {"n": n, "protocol": PROTOCOL, "cases": cases, "methods": {}, "wilcoxon_greater": {}}
    for method in METHODS:
        summary["methods"][method] = {
            f"{metric}_{stat}": float(fn(values[method][metric]))
            for metric in ("psnr", "ssim")
            for stat, fn in (("mean", np.mean), ("std", np.std))
        }
    for baseline in BASELINES:
        summary["wilcoxon_greater"][baseline] = {
            f"{metric}_p": one_sided_wilcoxon(values["model"][metric], values[baseline][metric])
            for metric in ("psnr", "ssim")
        }
    margin = values["model"]["psnr"] - values["cubic"]["psnr"]
    summary["model_minus_cubic_psnr"] = {
        "min": float(margin.min()),
        "mean": float(margin.mean()),
        "cases_better": int((margin > 0).sum()),
    }
    smallest = 0.5**n
    summary["significance_note"] = (
        f"n = {n}: the smallest one-sided Wilcoxon p-value possible is {smallest:.3g}; "
        + (
            "enough cases for p < 0.001."
            if smallest < SIGNIFICANCE
            else f"too few cases for significance at p < {SIGNIFICANCE} (at least 10 are needed)."
        )
    )
    return summary


def markdown_table(summary: dict, model_label: str = "TVSRN") -> str:
    """The README table: method | PSNR | SSIM (mean +- std), then n and the p-values."""
    lines = ["| method | PSNR (dB) | SSIM |", "| --- | --- | --- |"]
    for method in METHODS:
        m = summary["methods"][method]
        label = model_label if method == "model" else METHOD_LABELS[method]
        psnr = f"{m['psnr_mean']:.2f} ± {m['psnr_std']:.2f}"
        lines.append(f"| {label} | {psnr} | {m['ssim_mean']:.4f} ± {m['ssim_std']:.4f} |")
    tests = "; ".join(
        f"> {baseline}: PSNR p = {p['psnr_p']:.3g}, SSIM p = {p['ssim_p']:.3g}"
        for baseline, p in summary["wilcoxon_greater"].items()
    )
    n = summary["n"]
    lines += [
        "",
        f"n = {n} case{'' if n == 1 else 's'}; one-sided Wilcoxon signed-rank, model {tests}. "
        f"{summary['significance_note']}",
    ]
    return "\n".join(lines)


def evaluate(
    model: LoadedModel,
    cases: Iterable[EvalCase],
    options: PredictOptions,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict], dict]:
    """Score the model and both baselines on every case: (per-case rows, summary)."""
    rows = []
    for case in cases:
        case_rows = score_case(model, case, options)
        rows += case_rows
        if log is not None:
            log(
                f"{case.name}: "
                + ", ".join(f"{row['method']} {row['psnr']:.2f} dB / {row['ssim']:.4f}" for row in case_rows)
            )
    if not rows:
        raise ValueError("no cases to evaluate")
    summary = summarize(rows)
    summary["model"] = {"label": model.label, **model.info}
    return rows, summary


def write_results(rows: list[dict], summary: dict, out_dir: str | Path, model_label: str) -> list[Path]:
    """cases.csv, summary.json and summary.md in out_dir, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.DictWriter(table, CASE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    texts = {
        "cases.csv": table.getvalue(),
        "summary.json": json.dumps(summary, indent=2, allow_nan=False) + "\n",
        "summary.md": markdown_table(summary, model_label) + "\n",
    }
    written = []
    for name, text in texts.items():
        written.append(write_text_atomically(out / name, text))
    return written


# validation during training --------------------------------------------------------------------
def has_validation_data(cfg: TrainConfig) -> bool:
    """Validation volumes, or the val split of the RPLHR-CT root."""
    return bool(cfg.val_volumes) or bool(cfg.rplhr_root and (Path(cfg.rplhr_root) / "val").is_dir())


@lru_cache(maxsize=2)
def _validation_cases(volumes: tuple[str, ...], rplhr_root: str, ratio: int, depth: int, slab: str) -> tuple:
    if volumes:
        return tuple(pseudo_cases(volumes, ratio, slab))
    return tuple(real_cases(rplhr_root, "val", ratio, depth))


def validation_scores(model: nn.Module, cfg: TrainConfig, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Protocol PSNR / SSIM of the model on this shard (rank, world) of the validation cases."""
    net = cfg.network
    cases = _validation_cases(tuple(cfg.val_volumes), cfg.rplhr_root, net.ratio, net.depth, cfg.slab)
    device = next(model.parameters()).device
    options = PredictOptions(device=str(device), tile=cfg.val_tile or None, amp=False)  # scores in float32
    rank, world = shard
    scores = []
    for case in cases[rank::world]:
        thin, _ = super_resolve_hu(model, case.thick, case.thick_affine, options)
        scores.append({"case": case.name, **score_volume(thin, case.truth)})
    return scores


def validate_model(model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
    """Mean protocol PSNR and SSIM over the validation cases (full sliding-window predictor)."""
    scores = validation_scores(model, cfg)
    if not scores:
        raise ValueError("no validation data: set val_volumes (or rplhr_root with a val split)")
    return mean_scores(scores)


def mean_scores(scores: list[dict]) -> dict[str, float]:
    """Mean PSNR and SSIM of per-case scores (NaN when there are none)."""
    if not scores:
        return {"psnr": math.nan, "ssim": math.nan}
    return {metric: float(np.mean([s[metric] for s in scores])) for metric in ("psnr", "ssim")}

"""Model files: `<id>.safetensors` (the network's state_dict) beside `<id>.json` (the model card).

The cards themselves (reading, validation, the bundled models) live in model_cards, which needs no
torch; they are re-exported here.

Loading never unpickles anything: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ..atomic import write_bytes_atomically
from ..intensity import HU_MAX, HU_MIN
from .model_cards import (
    CARD_FORMAT,
    CARD_SUFFIX,
    DEFAULT_MARKER,
    ID_PATTERN,
    WEIGHTS_SUFFIX,
    ModelCard,
    ModelFileError,
    NoModelError,
    bundled_models,
    bundled_models_dir,
    check_card,
    default_model_path,
    read_card,
    resolve_card_path,
    sha256_of,
)
from .networks import build_network
from .thin_slice_network import count_parameters

__all__ = [
    "CARD_FORMAT",
    "CARD_SUFFIX",
    "DEFAULT_MARKER",
    "WEIGHTS_SUFFIX",
    "ModelCard",
    "ModelFileError",
    "NoModelError",
    "bundled_models",
    "bundled_models_dir",
    "default_model_path",
    "load_model",
    "read_card",
    "resolve_card_path",
    "save_model",
    "sha256_of",
]


def save_model(
    model: nn.Module,
    directory: str | Path,
    *,
    id: str,
    name: str,
    trained: bool,
    description: str = "",
    thick_spacing_mm: float | None = 5.0,
    thin_spacing_mm: float | None = None,
    intensity_window: tuple[float, float] = (HU_MIN, HU_MAX),
    training: dict | None = None,
    metrics: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `<id>.safetensors` and `<id>.json` into `directory`; returns the card's path.

    The card records the architecture, the weights' SHA-256 and parameter count. Both files are
    written to temporary names first and renamed, weights before card.
    """
    directory = Path(directory)
    if not ID_PATTERN.match(id):
        raise ModelFileError(f"model id {id!r} must be a plain file name (letters, digits, '.', '_', '-')")
    if not directory.is_dir():
        raise ModelFileError(f"the folder {directory} does not exist; create it first")
    weights_path, card_path = directory / f"{id}{WEIGHTS_SUFFIX}", directory / f"{id}{CARD_SUFFIX}"
    for path in (weights_path, card_path):
        if path.exists() and not overwrite:
            raise ModelFileError(f"{path} already exists; choose another id or allow overwriting")
    cfg = model.cfg
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    blob = save(tensors, metadata={"format": CARD_FORMAT, "id": id})
    if thin_spacing_mm is None and thick_spacing_mm is not None:
        thin_spacing_mm = thick_spacing_mm / cfg.ratio
    card = ModelCard(
        id=id,
        name=name,
        description=description,
        architecture=cfg.to_dict(),
        ratio=cfg.ratio,
        thick_spacing_mm=thick_spacing_mm,
        thin_spacing_mm=thin_spacing_mm,
        intensity_window=[float(intensity_window[0]), float(intensity_window[1])],
        trained=trained,
        training=dict(training or {}),
        metrics=dict(metrics or {}),
        parameters=count_parameters(model),
        sha256=hashlib.sha256(blob).hexdigest(),
        weights_file=weights_path.name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (Python 3.9)
    )
    check_card(card, f"the card of {id}")
    text = json.dumps(card.to_dict(), indent=2, allow_nan=False) + "\n"
    write_bytes_atomically(weights_path, blob)
    write_bytes_atomically(card_path, text.encode("utf-8"))
    return card_path


def load_model(
    model: str | Path, device: str | torch.device = "cpu", allow_untrained: bool = False
) -> tuple[nn.Module, ModelCard]:
    """Load a network (TVSRN or a baseline, as the card says) and its card, after checking format,
    checksum, configuration and tensor shapes."""
    card_path = resolve_card_path(model)
    card = read_card(card_path)
    if not card.trained and not allow_untrained:
        raise ModelFileError(
            f"{card_path.name}: this file holds untrained weights, it is not a model; its outputs would "
            "be noise. Train a model with `volumetricsr-train` (allow untrained weights only to test "
            "the pipeline)"
        )
    weights_path = card_path.parent / card.weights_file
    if not weights_path.exists():
        raise ModelFileError(f"the weights {weights_path} named by {card_path.name} are missing")
    if sha256_of(weights_path) != card.sha256:
        raise ModelFileError(
            f"checksum mismatch: {weights_path.name} is not the file its card {card_path.name} describes "
            "(damaged or modified); re-download or re-export the model"
        )
    try:
        tensors = load_file(weights_path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"cannot read the weights {weights_path.name}: {exc}") from exc
    network = build_network(card.config)
    _check_state_dict(network, tensors, card_path.name)
    network.load_state_dict(tensors, strict=True)
    network.eval()
    return network.to(device), card


def _check_state_dict(network: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in tensors.items()}
    problems = [f"missing {key}" for key in sorted(set(expected) - set(found))]
    problems += [f"unexpected {key}" for key in sorted(set(found) - set(expected))]
    problems += [
        f"{key} has shape {found[key]}, the architecture needs {expected[key]}"
        for key in sorted(set(expected) & set(found))
        if expected[key] != found[key]
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ModelFileError(f"the weights do not match the architecture in {source}: {shown}")

"""Model files: `<id>.safetensors` (the TVSRN state_dict) beside `<id>.json` (the model card).

Loading never unpickles anything: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import warnings
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .intensity import HU_MAX, HU_MIN
from .network import TVSRN, TVSRNConfig, count_parameters

CARD_FORMAT = "volumetricsr-model/1"
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
DEFAULT_MARKER = "default.txt"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PICKLED_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")


class ModelFileError(ValueError):
    """A model file or card cannot be used; the message says why and what to do."""


class NoModelError(ModelFileError):
    """No trained model is bundled and none was given."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "no trained model is bundled with VolumetricSR yet (Resources/Models holds none). "
            "Train one with `volumetricsr-train` (see the README, section Training) and pass it with "
            "--model PATH, or copy its .safetensors and .json files into Resources/Models."
        )


@dataclass
class ModelCard:
    """What a model is, how it was trained and how well it does; stored as `<id>.json`."""

    id: str
    name: str
    description: str
    architecture: dict
    ratio: int
    thick_spacing_mm: float | None
    thin_spacing_mm: float | None
    intensity_window: list[float]
    trained: bool
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    parameters: int = 0
    sha256: str = ""
    weights_file: str = ""
    created: str = ""
    format: str = CARD_FORMAT

    @property
    def config(self) -> TVSRNConfig:
        """The architecture as a TVSRNConfig."""
        return TVSRNConfig.from_dict(self.architecture)

    @property
    def window(self) -> tuple[float, float]:
        """The HU window (low, high) that maps to [0, 1]."""
        lo, hi = self.intensity_window
        return float(lo), float(hi)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "the model card") -> ModelCard:
        """Build and validate a card; every problem is named in one ModelFileError."""
        if not isinstance(data, dict):
            raise ModelFileError(f"{source} is not a JSON object")
        if data.get("format") != CARD_FORMAT:
            raise ModelFileError(
                f"{source} has format {data.get('format')!r}, expected {CARD_FORMAT!r}; "
                "it was not written by this version of VolumetricSR"
            )
        known = {f.name for f in fields(cls)}
        problems = [f"unknown field {name!r}" for name in sorted(set(data) - known)]
        problems += [f"missing field {name!r}" for name in sorted(known - set(data))]
        if problems:
            raise ModelFileError(f"{source} is malformed: {'; '.join(problems)}")
        card = cls(**data)
        card.ratio = _check_card(card, source)
        return card


def _check_card(card: ModelCard, source: str) -> int:
    """Validate the values of a card; returns its ratio as an int."""
    problems = []
    if not isinstance(card.id, str) or not _ID_PATTERN.match(card.id):
        problems.append(f"id {card.id!r} is not a plain file name (letters, digits, '.', '_', '-')")
    ratio = card.ratio
    if isinstance(ratio, float) and ratio.is_integer():
        ratio = int(ratio)
    if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 1:
        problems.append(f"ratio {card.ratio!r} is not a positive whole number")
    for name in ("thick_spacing_mm", "thin_spacing_mm"):
        value = getattr(card, name)
        if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
            problems.append(f"{name} {value!r} is not a positive number")
    window = card.intensity_window
    if not _is_window(window):
        problems.append(f"intensity_window {window!r} is not [low, high] with low < high")
    if not isinstance(card.trained, bool):
        problems.append(f"trained {card.trained!r} is not true or false")
    if not isinstance(card.architecture, dict):
        problems.append("architecture is not a JSON object")
    else:
        try:
            config = card.config
        except (TypeError, ValueError) as exc:
            problems.append(f"architecture is not a valid TVSRN configuration ({exc})")
        else:
            if isinstance(ratio, int) and config.ratio != ratio:
                problems.append(f"ratio {ratio} differs from the architecture's ratio {config.ratio}")
    if not isinstance(card.weights_file, str) or Path(card.weights_file).name != card.weights_file:
        problems.append(f"weights_file {card.weights_file!r} is not a file name beside the card")
    if problems:
        raise ModelFileError(f"{source} is invalid: {'; '.join(problems)}")
    return ratio


def _is_window(window: object) -> bool:
    """[low, high] with finite numbers, low < high."""
    if not (isinstance(window, list) and len(window) == 2):
        return False
    if not all(_is_number(v) and math.isfinite(v) for v in window):
        return False
    return window[0] < window[1]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(
    model: TVSRN,
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
    if not _ID_PATTERN.match(id):
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
    _check_card(card, f"the card of {id}")
    text = json.dumps(card.to_dict(), indent=2, allow_nan=False) + "\n"
    _write_atomically(weights_path, blob)
    _write_atomically(card_path, text.encode("utf-8"))
    return card_path


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_card(path: str | Path) -> ModelCard:
    """Read and validate a model card (.json)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelFileError(f"model card not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read the model card {path.name}: {exc}") from exc
    return ModelCard.from_dict(data, source=f"the model card {path.name}")


def resolve_card_path(model: str | Path) -> Path:
    """The card of a model given as a .json, a .safetensors, or the id of a bundled model."""
    path = Path(model)
    suffix = path.suffix.lower()
    if suffix in _PICKLED_SUFFIXES:
        raise ModelFileError(
            f"{path.name} looks like a pickled PyTorch checkpoint; VolumetricSR never loads pickles "
            "(unpickling can run arbitrary code). Export the model with save_model to "
            ".safetensors + .json"
        )
    if suffix == CARD_SUFFIX:
        card = path
    elif suffix == WEIGHTS_SUFFIX:
        card = path.with_suffix(CARD_SUFFIX)
        if path.exists() and not card.exists():
            raise ModelFileError(
                f"{path.name} has no model card {card.name} beside it; both files are needed"
            )
    elif path.exists():
        raise ModelFileError(f"{path.name} is not a model file; give a .safetensors or .json model file")
    else:
        return _bundled_card_path(str(model))
    if not card.exists():
        raise ModelFileError(f"model file not found: {path}")
    return card


def _bundled_card_path(model_id: str) -> Path:
    directory = bundled_models_dir()
    if _ID_PATTERN.match(model_id) and directory is not None:
        card = directory / f"{model_id}{CARD_SUFFIX}"
        if card.exists():
            return card
    ids = [path.stem for path, _ in _bundled_cards()]
    available = f"bundled models: {', '.join(ids)}" if ids else "no model is bundled"
    raise ModelFileError(
        f"{model_id!r} is neither a model file nor the id of a bundled model ({available}); "
        "give the path of a .safetensors or .json model file"
    )


def load_model(
    model: str | Path, device: str | torch.device = "cpu", allow_untrained: bool = False
) -> tuple[TVSRN, ModelCard]:
    """Load a TVSRN and its card, after checking format, checksum, configuration and tensor shapes."""
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
    network = TVSRN(card.config)
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


def bundled_models_dir() -> Path | None:
    """Resources/Models of the source tree or of a built Slicer extension, whichever exists."""
    library = Path(__file__).resolve().parent
    for candidate in (
        library.parent.parent / "Resources" / "Models",
        library.parent / "Resources" / "Models",
    ):
        if candidate.is_dir():
            return candidate
    return None


def bundled_models() -> list[ModelCard]:
    """Valid cards in Resources/Models, sorted by file name; an invalid card is skipped with a warning."""
    return [card for _, card in _bundled_cards()]


def _bundled_cards() -> list[tuple[Path, ModelCard]]:
    directory = bundled_models_dir()
    if directory is None:
        return []
    cards = []
    for path in sorted(directory.glob(f"*{CARD_SUFFIX}")):
        try:
            cards.append((path, read_card(path)))
        except ModelFileError as exc:
            warnings.warn(f"skipping bundled model card: {exc}", stacklevel=3)
    return cards


def default_model_path() -> Path | None:
    """Card of the default bundled model: the id in default.txt, else the only trained model, else None."""
    directory = bundled_models_dir()
    if directory is None:
        return None
    marker = directory / DEFAULT_MARKER
    if marker.exists():
        model_id = marker.read_text(encoding="utf-8").strip()
        card = directory / f"{model_id}{CARD_SUFFIX}"
        if not _ID_PATTERN.match(model_id) or not card.exists():
            raise ModelFileError(f"{marker} names the model {model_id!r}, but {card.name} is not there")
        return card
    trained = [(path, card) for path, card in _bundled_cards() if card.trained]
    if len(trained) > 1:
        raise ModelFileError(
            f"several trained models are bundled ({', '.join(c.id for _, c in trained)}) and no "
            f"{marker.name} names one; choose one with --model or write its id into {marker}"
        )
    return trained[0][0] if trained else None

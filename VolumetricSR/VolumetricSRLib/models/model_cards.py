"""Model cards (`<id>.json` beside `<id>.safetensors`): read, validate and find them, without torch.

Slicer's GUI process lists and describes models through this module; only the child process that
runs the network loads weights (weights.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..checks import is_positive_whole_number
from .architectures import ModelConfig, config_from_dict

CARD_FORMAT = "volumetricsr-model/1"
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
DEFAULT_MARKER = "default.txt"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
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
    def config(self) -> ModelConfig:
        """The architecture: a TVSRNConfig, or a baseline's config when it names one under "arch"."""
        return config_from_dict(self.architecture)

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
        card.ratio = check_card(card, source)
        return card


def check_card(card: ModelCard, source: str) -> int:
    """Validate the values of a card; returns its ratio as an int."""
    problems = []
    if not isinstance(card.id, str) or not ID_PATTERN.match(card.id):
        problems.append(f"id {card.id!r} is not a plain file name (letters, digits, '.', '_', '-')")
    ratio = card.ratio
    if isinstance(ratio, float) and ratio.is_integer():
        ratio = int(ratio)
    if not is_positive_whole_number(ratio):
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
            problems.append(f"architecture is not a valid network configuration ({exc})")
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
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


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
    if ID_PATTERN.match(model_id) and directory is not None:
        card = directory / f"{model_id}{CARD_SUFFIX}"
        if card.exists():
            return card
    ids = [path.stem for path, _ in _bundled_cards()]
    available = f"bundled models: {', '.join(ids)}" if ids else "no model is bundled"
    raise ModelFileError(
        f"{model_id!r} is neither a model file nor the id of a bundled model ({available}); "
        "give the path of a .safetensors or .json model file"
    )


def bundled_models_dir() -> Path | None:
    """Resources/Models of the source tree or of a built Slicer extension, or the copy an installed
    wheel carries as package data (VolumetricSRLib/bundled_models), whichever exists."""
    library = Path(__file__).resolve().parents[1]  # VolumetricSRLib (this module is in its models/)
    for candidate in (
        library.parent.parent / "Resources" / "Models",
        library.parent / "Resources" / "Models",
        library / "bundled_models",
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
        if not ID_PATTERN.match(model_id) or not card.exists():
            raise ModelFileError(f"{marker} names the model {model_id!r}, but {card.name} is not there")
        return card
    trained = [(path, card) for path, card in _bundled_cards() if card.trained]
    if len(trained) > 1:
        raise ModelFileError(
            f"several trained models are bundled ({', '.join(c.id for _, c in trained)}) and no "
            f"{marker.name} names one; choose one with --model or write its id into {marker}"
        )
    return trained[0][0] if trained else None


SAME_THICKNESS = 0.1
"""Relative difference up to which a scan's slices count as the thickness a model was trained for."""


def model_for_slices(slice_mm: float, thin_mm: float | None = None) -> Path | None:
    """Card of the bundled model for a scan of `slice_mm` slices, made into `thin_mm` slices (None: the
    default model's thin spacing): a trained model made for that thickness (within SAME_THICKNESS),
    else one whose own grid (slice_mm / ratio) lands on every n-th thin slice exactly (2.5 mm with a
    x5 model: 0.5 mm, every second one on 1 mm), else the default model. The default wins ties."""
    default = default_model_path()
    if default is None:
        return None
    cards = sorted(_bundled_cards(), key=lambda item: (item[0] != default, item[0].name))
    trained = [(path, card) for path, card in cards if card.trained and card.thick_spacing_mm]
    for path, card in trained:
        if abs(slice_mm / card.thick_spacing_mm - 1) <= SAME_THICKNESS:
            return path
    target = thin_mm if thin_mm is not None else read_card(default).thin_spacing_mm
    if target:
        for path, card in trained:
            steps = target / (slice_mm / card.ratio)
            if steps >= 1 and abs(steps - round(steps)) <= 0.01 * steps:
                return path
    return default

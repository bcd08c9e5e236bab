"""Training configuration: a TOML file (optionally on top of a `base` TOML file) plus `key=value`
command-line overrides."""

from __future__ import annotations

import ast
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from VolumetricSRLib.inference.consistency import SLABS
from VolumetricSRLib.models.architectures import ModelConfig, config_from_dict

from .pseudo_pairs import SlabAugmentation


@dataclass
class TrainConfig:
    """Everything a training run depends on; stored in every checkpoint."""

    run_dir: str = "runs/tvsrn"
    # the network: TVSRNConfig fields, or arch = "resvox" | "mpunet" | "saint" | "davsr" and that config's
    model: dict = field(default_factory=lambda: {"output": "residual"})
    # data: thin-only CT volumes for pseudo pairs, with sampling weights; or an RPLHR-CT root
    train_volumes: list = field(default_factory=list)
    train_weights: list = field(default_factory=list)
    val_volumes: list = field(default_factory=list)
    rplhr_root: str = ""
    rplhr_skip_invalid: bool = False
    # a checkpoint whose weights a new run starts from (fresh optimizer and schedule); "" = from scratch
    init_from: str = ""
    # with init_from: take only the tensors whose name and shape match this run's network (e.g. a x5
    # model's decoder for a x3 network of another input depth); the others start fresh
    init_partial: bool = False
    slab: str = "box"
    # slab augmentation: a profile of slab_mix (box, gaussian, trapezoid) and a width of slab_width x the
    # ratio drawn per pair instead of `slab` (empty: off)
    slab_mix: list = field(default_factory=list)
    slab_width: list = field(default_factory=lambda: [1.0, 1.0])
    noise_hu: float = 0.0
    crop: list = field(default_factory=lambda: [4, 64, 64])
    inplane_scales: list = field(default_factory=lambda: [1])
    # share of pseudo pairs made along an in-plane axis (self-supervision at the scan's finest scale)
    inplane_pairs: float = 0.0
    min_body_fraction: float = 0.2
    flip: bool = True
    # optimisation
    batch: int = 2
    steps: int = 4000
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    schedule: str = "cosine"
    grad_clip: float = 1.0
    # weight of an adversarial loss against a 3D patch discriminator (GAN training, as ResVoxGAN); 0 = off
    adversarial_weight: float = 0.0
    amp: bool = True
    seed: int = 0
    threads: int = 2
    # bookkeeping
    log_every: int = 10
    val_every: int = 0
    snapshot_every: int = 250
    checkpoint_minutes: float = 5.0
    val_tile: int = 0
    device: str = "auto"
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True
    # each rank writes replica_digest_rank<R>.txt (SHA-256 of its weights) when a run ends
    write_digests: bool = False

    def __post_init__(self) -> None:
        self._check_types()
        config_from_dict(self.model)
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.adversarial_weight < 0:
            raise ValueError(f"adversarial_weight must be 0 (off) or positive, got {self.adversarial_weight}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if self.slab not in SLABS:
            raise ValueError(f"slab must be one of {', '.join(SLABS)}, got {self.slab!r}")
        if self.train_weights and len(self.train_weights) != len(self.train_volumes):
            raise ValueError("train_weights needs one weight per train volume")
        if self.slab_mix:
            self.augmentation()  # refuses unknown profiles and widths now
        if len(self.crop) != 3:
            raise ValueError("crop is [depth, height, width] of the thick crop")
        if self.crop[0] != self.network.depth:
            raise ValueError(
                f"the crop depth {self.crop[0]} must equal the network's input depth {self.network.depth}"
            )
        if self.train_volumes and self.rplhr_root:
            raise ValueError("give either train_volumes (pseudo pairs) or rplhr_root (real pairs), not both")

    def _check_types(self) -> None:
        """Every setting has its field's type (ints accepted as floats, tuples as lists)."""
        problems = []
        for item in fields(self):
            value, kind = getattr(self, item.name), str(item.type)
            accepted, wanted = _FIELD_TYPES[kind]
            if not isinstance(value, accepted) or (isinstance(value, bool) and kind in ("int", "float")):
                problems.append(f"{item.name} must be {wanted}, got {value!r}")
            elif kind == "float":
                setattr(self, item.name, float(value))
            elif kind == "list":
                setattr(self, item.name, list(value))
        if problems:
            raise ValueError(
                "; ".join(problems) + " (values on the command line use Python syntax, e.g. "
                "--set 'train_volumes=[\"ct.nii.gz\"]' --set lr=5e-4)"
            )

    def augmentation(self) -> SlabAugmentation | None:
        """The slab augmentation of slab_mix and slab_width, or None when it is off."""
        if not self.slab_mix:
            return None
        if len(self.slab_width) != 2:
            raise ValueError(f"slab_width is [low, high], got {self.slab_width!r}")
        return SlabAugmentation(tuple(self.slab_mix), (float(self.slab_width[0]), float(self.slab_width[1])))

    @property
    def network(self) -> ModelConfig:
        return config_from_dict(self.model)

    def to_dict(self) -> dict:
        return asdict(self)


# field annotation -> (accepted Python types, what to say)
_FIELD_TYPES = {
    "str": ((str,), "text"),
    "bool": ((bool,), "true or false"),
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "list": ((list, tuple), "a list"),
    "dict": ((dict,), "a table"),
}

# The optimisation settings a model card reports.
SCHEDULE_KEYS = (
    "optimizer",
    "lr",
    "weight_decay",
    "warmup",
    "schedule",
    "steps",
    "grad_clip",
    "batch",
    "crop",
    "inplane_scales",
    "inplane_pairs",
    "slab_mix",
    "slab_width",
    "flip",
    "min_body_fraction",
    "amp",
    "seed",
)
# Settings a resumed run may change: where it runs and how often it reports, never what it learns.
BOOKKEEPING_KEYS = frozenset(
    {
        "run_dir",
        "log_every",
        "val_every",
        "val_volumes",
        "val_tile",
        "snapshot_every",
        "checkpoint_minutes",
        "device",
        "threads",
        "tensorboard",
        "plot",
        "progress",
        "write_digests",
    }
)


def learning_differences(saved: dict, current: dict) -> list[str]:
    """`key: saved -> current` for each setting outside BOOKKEEPING_KEYS that differs."""
    current = json.loads(json.dumps(current))  # the form a checkpoint stores (lists, not tuples)
    return [
        f"{key}: {saved[key]!r} -> {current[key]!r}"
        for key in sorted(current)
        if key not in BOOKKEEPING_KEYS and key in saved and saved[key] != current[key]
    ]


def _parse_value(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key=value` (or `model.key=value`) strings to a config dictionary (the data source is one
    choice, as in a TOML file on top of its base)."""
    own: dict = {"model": dict(data.get("model", {}))}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        if key.startswith("model."):
            own["model"][key[len("model.") :]] = _parse_value(value)
        else:
            own[key] = _parse_value(value)
    return choose_data_source(data, own)


PSEUDO_PAIR_KEYS = ("train_volumes", "train_weights", "val_volumes")
"""The settings of the pseudo-pair data source; `rplhr_root` is the other source."""


def choose_data_source(base: dict, own: dict) -> dict:
    """`base` updated with `own`, where the data source is one choice: setting `rplhr_root` drops the
    pseudo pairs (and their validation volumes: validation is then the RPLHR-CT `val` split) that
    `base` had, and setting `train_volumes` drops its `rplhr_root`."""
    merged = {**base, **own}
    if own.get("rplhr_root") and "train_volumes" not in own:
        for key in PSEUDO_PAIR_KEYS:
            if key not in own:
                merged.pop(key, None)
    if own.get("train_volumes") and "rplhr_root" not in own:
        merged.pop("rplhr_root", None)
    return merged


def read_toml(path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """A TOML config; `base = "FILE"` (relative to the file) takes every setting of FILE that this file
    does not set itself (a whole table, such as `model`, replaces the base's; the data source is one
    choice, see choose_data_source)."""
    path = Path(path).resolve()
    if path in seen:
        raise ValueError(f"config base cycle: {' -> '.join(p.name for p in (*seen, path))}")
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ValueError(f"{path.name}: base must be the name of a TOML file, got {base!r}")
    return choose_data_source(read_toml(path.parent / base, (*seen, path)), data)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML config (or the defaults when path is None) and apply overrides."""
    data = read_toml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown training config keys: {sorted(unknown)}")
    return TrainConfig(**data)

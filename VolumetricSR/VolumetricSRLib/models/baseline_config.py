"""Hyper-parameters of the CNN baselines the RPLHR-CT paper compares TVSRN with; plain dataclasses that
need no torch (model cards are read without it). The networks themselves: baselines.py.

They are our own smaller versions, not the published networks, and their labels say so wherever they
appear: ResVox without its adversarial loss, MPU-Net with the L1 loss only (not its own losses),
SAINT-lite (residual blocks, one stage; the published SAINT has an RDN backbone, a filter-generating
network and two-stage training), DA-VSR without its test-time adaptation.

Every config has TVSRNConfig's contract: `ratio`, `depth`, `thin_depth`, `output` ("direct" or
"residual"), `to_dict` / `from_dict`, `tiny()`. `to_dict` records the architecture's name under "arch".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from .network_config import OUTPUTS

ARCH_KEY = "arch"


@dataclass(frozen=True)
class BaselineConfig:
    """What every baseline has: the thick window (depth), the ratio, the output formulation and a width."""

    arch: ClassVar[str] = ""
    label: ClassVar[str] = ""
    ratio: int = 5
    depth: int = 4
    channels: int = 32
    blocks: int = 8
    output: str = "direct"

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; choose one of {OUTPUTS}")
        if self.ratio < 1 or self.depth < 2:
            raise ValueError("ratio must be >= 1 and depth >= 2")
        small = [f.name for f in fields(self) if f.type == "int" and getattr(self, f.name) < 1]
        if small:
            raise ValueError(f"{self.label}: {', '.join(small)} must be at least 1")

    @property
    def thin_depth(self) -> int:
        """Number of output slices D' = (D - 1) * r + 1."""
        return (self.depth - 1) * self.ratio + 1

    @property
    def variant(self) -> str:
        """The architecture's name, where a TVSRN config names its ablation variant."""
        return self.arch

    def to_dict(self) -> dict:
        return {ARCH_KEY: self.arch, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> BaselineConfig:
        data = dict(data)
        arch = data.pop(ARCH_KEY, cls.arch)
        if arch != cls.arch:
            raise ValueError(f"a {cls.label} config cannot hold the architecture {arch!r}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.label} config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def tiny(cls, **overrides) -> BaselineConfig:
        """Smallest working configuration, for fast tests."""
        return cls(**{"channels": 4, "blocks": 1, **overrides})


@dataclass(frozen=True)
class ResVoxConfig(BaselineConfig):
    """ResVox: the 3D residual generator of ResVoxGAN (Chen et al., MICCAI 2019) without its
    noise-reduction part; `blocks` 3D residual blocks of `channels` features, sub-voxel depth upsampling."""

    arch: ClassVar[str] = "resvox"
    label: ClassVar[str] = "ResVox without GAN"
    blocks: int = 6


@dataclass(frozen=True)
class MPUNetConfig(BaselineConfig):
    """MPU-Net (MICCAI 2020), one stream: a 3D encoder-decoder that halves the in-plane size `levels`
    times (doubling the width) and upsamples depth at every scale, coarse to fine."""

    arch: ClassVar[str] = "mpunet"
    label: ClassVar[str] = "MPU-Net, L1 only"
    channels: int = 16
    blocks: int = 1
    levels: int = 2

    @classmethod
    def tiny(cls, **overrides) -> MPUNetConfig:
        return cls(**{"channels": 2, "blocks": 1, "levels": 1, **overrides})


@dataclass(frozen=True)
class SAINTConfig(BaselineConfig):
    """SAINT (Peng et al., CVPR 2020): a 2D network upsamples sagittal and coronal planes along depth
    with position-generated filters; a residual fusion network merges both on axial slices."""

    arch: ClassVar[str] = "saint"
    label: ClassVar[str] = "SAINT-lite"
    blocks: int = 6
    neighbours: int = 3
    fusion_channels: int = 32
    fusion_blocks: int = 2
    filter_hidden: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.neighbours % 2 == 0:
            raise ValueError(
                f"SAINT: neighbours must be odd (a centre plane and its neighbours), got {self.neighbours}"
            )

    @classmethod
    def tiny(cls, **overrides) -> SAINTConfig:
        base = {"channels": 4, "blocks": 1, "fusion_channels": 4, "fusion_blocks": 1, "filter_hidden": 4}
        return cls(**{**base, **overrides})


@dataclass(frozen=True)
class DAVSRConfig(BaselineConfig):
    """DA-VSR (Peng et al., MICCAI 2021): one 2D feature backbone shared by a through-plane head
    (sagittal and coronal planes, x ratio along depth) and a fusion head on axial slices."""

    arch: ClassVar[str] = "davsr"
    label: ClassVar[str] = "DA-VSR without adaptation"
    blocks: int = 4
    head_blocks: int = 1

    @classmethod
    def tiny(cls, **overrides) -> DAVSRConfig:
        return cls(**{"channels": 4, "blocks": 1, "head_blocks": 1, **overrides})

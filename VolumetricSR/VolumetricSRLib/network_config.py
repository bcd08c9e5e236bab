"""TVSRN's hyper-parameters: a plain dataclass that needs no torch (model cards are read without it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

VARIANTS = ("full", "no_tab", "encoder_only", "vit")
OUTPUTS = ("direct", "residual")


@dataclass(frozen=True)
class TVSRNConfig:
    """Architecture hyper-parameters; the defaults are the paper's TVSRN."""

    variant: str = "full"
    ratio: int = 5
    depth: int = 4
    channels: int = 8
    encoder_layers: int = 4
    fim_count: int = 1
    fim_layers: int = 4
    window: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    tab_window: tuple[int, int] = (4, 8)
    tab_fold: int = 8
    output: str = "direct"
    vit_patch: int = 16
    vit_dim: int = 512
    vit_layers: int = 8
    vit_heads: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "tab_window", tuple(self.tab_window))
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; choose one of {OUTPUTS}")
        if self.ratio < 1 or self.depth < 2:
            raise ValueError("ratio must be >= 1 and depth >= 2")
        for name, dim in self._attention_widths().items():
            if dim % self._heads_for(name):
                raise ValueError(f"{name} width {dim} is not divisible by its head count")

    @property
    def thin_depth(self) -> int:
        """Number of output slices D' = (D - 1) * r + 1."""
        return (self.depth - 1) * self.ratio + 1

    def _heads_for(self, name: str) -> int:
        return self.vit_heads if name == "vit" else self.heads

    def _attention_widths(self) -> dict[str, int]:
        if self.variant == "vit":
            return {"vit": self.vit_dim}
        widths = {"encoder": self.channels * self.depth}
        if self.variant in ("full", "no_tab"):
            widths["decoder"] = self.channels * self.thin_depth
        if self.variant == "full":
            widths["tab"] = self.channels * self.tab_fold
        return widths

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tab_window"] = list(self.tab_window)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TVSRNConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TVSRN config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def variant_defaults(cls, variant: str, **overrides) -> TVSRNConfig:
        """The paper's configuration of each ablation variant."""
        base: dict = {"variant": variant}
        if variant == "encoder_only":
            base.update(channels=32, encoder_layers=8)
        elif variant == "vit":
            base.update(mlp_ratio=2.0)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides) -> TVSRNConfig:
        """Smallest working configuration, for self-tests and fast tests."""
        base: dict = {
            "channels": 2,
            "encoder_layers": 1,
            "fim_layers": 1,
            "window": 4,
            "heads": 1,
            "tab_fold": 2,
            "tab_window": (4, 4),
        }
        return cls(**{**base, **overrides})

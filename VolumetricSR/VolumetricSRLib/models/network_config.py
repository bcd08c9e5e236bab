"""TVSRN's hyper-parameters: a plain dataclass that needs no torch (model cards are read without it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

VARIANTS = ("full", "no_tab", "encoder_only", "vit")
OUTPUTS = ("direct", "residual")
SIZES = ("compact", "paper")
PAPER_PARAMETERS = {"full": 1.73e6, "no_tab": 1.56e6, "encoder_only": 1.58e6, "vit": 17.15e6}
"""Parameter counts the RPLHR-CT paper reports for TVSRN and its ablation variants (Table 1)."""

PAPER_DEPTHS = {"encoder_layers": 8, "tab_layers": 4, "axial_layers": 7}
"""Layer counts of the `paper` size. The paper's text (4 encoder, 4 TAB, 4 axial Swin layers) gives
1.06M parameters and its authors' code (4 encoder, 4 TAB, 8 axial) 1.86M; neither meets the reported
1.73M / 1.56M / 1.58M. Of all stacks of 1-8 layers with the paper's widths, windows and MLP ratio,
8 encoder + 4 TAB + 7 axial layers comes closest to all three counts at once (-0.6 %, -2.8 %, +1.4 %):
the paper's TAB depth, the encoder depth the paper gives its encoder-only variant, and the authors'
axial stack one layer short."""


@dataclass(frozen=True)
class TVSRNConfig:
    """Architecture hyper-parameters; the defaults are the paper's TVSRN."""

    variant: str = "full"
    ratio: int = 5
    depth: int = 4
    channels: int = 8
    encoder_layers: int = 4
    fim_count: int = 1
    tab_layers: int = 4
    axial_layers: int = 4
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
        """The config a dictionary describes; `fim_layers` (cards written before the TAB and the axial
        stack had depths of their own) sets both."""
        data = dict(data)
        if "fim_layers" in data:
            layers = data.pop("fim_layers")
            data.setdefault("tab_layers", layers)
            data.setdefault("axial_layers", layers)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TVSRN config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def variant_defaults(cls, variant: str, size: str = "compact", **overrides) -> TVSRNConfig:
        """Each ablation variant as the paper describes it, at the `compact` size (the paper's text:
        4 TAB and 4 axial layers, 1.06M for TVSRN) or the `paper` size (PAPER_DEPTHS: the reported
        parameter counts)."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {SIZES}")
        base: dict = {"variant": variant}
        if size == "paper" and variant in ("full", "no_tab"):
            base.update(PAPER_DEPTHS)
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
            "tab_layers": 1,
            "axial_layers": 1,
            "window": 4,
            "heads": 1,
            "tab_fold": 2,
            "tab_window": (4, 4),
        }
        return cls(**{**base, **overrides})

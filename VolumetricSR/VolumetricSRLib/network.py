"""TVSRN: the transformer volumetric super-resolution network and its ablation variants.

Input: a batch of D thick slices in [0, 1], shape (B, D, H, W). Output: the (D - 1) * r + 1 thin
slices that span them, shape (B, D', H, W); output slice r * i lies on input slice i.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

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


# Cached tensors are built outside inference mode: one first built under the predictor's
# inference_mode would be an inference tensor, unusable by a later training step.
@lru_cache(maxsize=64)
@torch.inference_mode(False)
def _relative_index(wh: int, ww: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


@lru_cache(maxsize=64)
@torch.inference_mode(False)
def _window_mask(
    size: tuple[int, int], padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor | None:
    """Additive mask (nW, 1, N, N): -inf between tokens of different shift regions or padding."""
    (h, w), (hp, wp), (wh, ww), (sh, sw) = size, padded, window, shift
    if (hp, wp) == (h, w) and shift == (0, 0):
        return None
    labels = torch.zeros(hp, wp, dtype=torch.long)
    if shift != (0, 0):
        row = torch.zeros(hp, dtype=torch.long)
        col = torch.zeros(wp, dtype=torch.long)
        if sh:
            row[hp - wh : hp - sh] = 1
            row[hp - sh :] = 2
        if sw:
            col[wp - ww : wp - sw] = 1
            col[wp - sw :] = 2
        labels = row[:, None] * 3 + col[None, :]
    # padding sits at the end in original coordinates; the rolled grid starts `shift` further on
    orig_r = (torch.arange(hp) + sh) % hp
    orig_c = (torch.arange(wp) + sw) % wp
    pad = (orig_r[:, None] >= h) | (orig_c[None, :] >= w)
    labels = labels + 9 * pad.long()
    win = labels.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    mask = torch.zeros(win.shape[0], wh * ww, wh * ww)
    mask.masked_fill_(win[:, :, None] != win[:, None, :], float("-inf"))
    return mask[:, None]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (wh x ww) windows with a relative position bias."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int]) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1), heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, nW, N, C) windows of tokens; mask: (nW, 1, N, N) or None."""
        b, nw, n, c = x.shape
        qkv = self.qkv(x).view(b, nw, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        index = _relative_index(*self.window).to(x.device)
        bias = self.bias_table[index.view(-1)].view(n, n, self.heads).permute(2, 0, 1)
        attn_mask = bias.to(x.dtype) if mask is None else bias.to(x.dtype) + mask.to(x.device, x.dtype)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class SwinLayer(nn.Module):
    """One Swin Transformer layer on a 2D token map (B, H, W, C), any H and W."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int], shifted: bool, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        wh, ww = self.window
        hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
        shift = (wh // 2 if self.shifted and hp > wh else 0, ww // 2 if self.shifted and wp > ww else 0)
        y = F.pad(self.norm1(x), (0, 0, 0, wp - w, 0, hp - h))
        if shift != (0, 0):
            y = torch.roll(y, (-shift[0], -shift[1]), dims=(1, 2))
        windows = y.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(b, -1, wh * ww, c)
        windows = self.attn(windows, _window_mask((h, w), (hp, wp), self.window, shift))
        y = windows.view(b, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if shift != (0, 0):
            y = torch.roll(y, shift, dims=(1, 2))
        x = x + y[:, :h, :w]
        return x + self.mlp(self.norm2(x))


class SwinStack(nn.Module):
    """Swin layers with the shift on every second layer."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int], layers: int, mlp_ratio: float):
        super().__init__()
        self.layers = nn.ModuleList(
            SwinLayer(dim, heads, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio) for i in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ThroughPlaneAttention(nn.Module):
    """TAB: shared Swin layers on sagittal (depth x height) and coronal (depth x width) planes.

    `fold` neighbouring columns (rows) are folded into the channels of each plane.
    """

    def __init__(self, cfg: TVSRNConfig) -> None:
        super().__init__()
        self.fold = cfg.tab_fold
        dim = cfg.channels * cfg.tab_fold
        self.stack = SwinStack(dim, cfg.heads, cfg.tab_window, cfg.fim_layers, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, D', C) with H and W multiples of the fold."""
        b, h, w, d, c = x.shape
        f = self.fold
        sag = x.view(b, h, w // f, f, d, c).permute(0, 2, 4, 1, 3, 5).reshape(b * (w // f), d, h, f * c)
        sag = self.stack(sag).view(b, w // f, d, h, f, c).permute(0, 3, 1, 4, 2, 5).reshape(b, h, w, d, c)
        cor = x.view(b, h // f, f, w, d, c).permute(0, 1, 4, 3, 2, 5).reshape(b * (h // f), d, w, f * c)
        cor = self.stack(cor).view(b, h // f, d, w, f, c).permute(0, 1, 4, 3, 2, 5).reshape(b, h, w, d, c)
        return x + sag + cor


class FeatureInteraction(nn.Module):
    """FIM: an optional TAB followed by axial Swin layers, with a residual around the block."""

    def __init__(self, cfg: TVSRNConfig) -> None:
        super().__init__()
        self.tab = ThroughPlaneAttention(cfg) if cfg.variant == "full" else None
        dim = cfg.channels * cfg.thin_depth
        self.axial = SwinStack(dim, cfg.heads, (cfg.window, cfg.window), cfg.fim_layers, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, D', C)."""
        y = self.tab(x) if self.tab is not None else x
        b, h, w, d, c = y.shape
        return x + self.axial(y.reshape(b, h, w, d * c)).view(b, h, w, d, c)


def depth_position_code(length: int, channels: int) -> torch.Tensor:
    """Fixed sinusoidal code (length, channels) along depth."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    code = torch.zeros(length, channels)
    code[:, 0::2] = torch.sin(pos * freq)
    code[:, 1::2] = torch.cos(pos * freq[: channels // 2])
    return code


def depth_interpolation_matrix(depth: int, ratio: int) -> torch.Tensor:
    """(D', D) weights of linear interpolation from thick slices to the thin grid."""
    thin = (depth - 1) * ratio + 1
    matrix = torch.zeros(thin, depth)
    for j in range(thin):
        lo, t = divmod(j, ratio)
        matrix[j, lo] = 1.0 - t / ratio
        if t:
            matrix[j, lo + 1] = t / ratio
    return matrix


class TVSRN(nn.Module):
    """The network; `cfg.variant` selects full, no_tab, encoder_only or vit."""

    def __init__(self, cfg: TVSRNConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or TVSRNConfig()
        c, d = cfg.channels, cfg.depth
        self.register_buffer("interp", depth_interpolation_matrix(d, cfg.ratio), persistent=False)
        if cfg.variant == "vit":
            p = cfg.vit_patch
            self.patch_embed = nn.Linear(d * p * p, cfg.vit_dim)
            self.vit = nn.ModuleList(
                nn.TransformerEncoderLayer(
                    cfg.vit_dim,
                    cfg.vit_heads,
                    int(cfg.vit_dim * cfg.mlp_ratio),
                    dropout=0.0,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(cfg.vit_layers)
            )
            self.vit_norm = nn.LayerNorm(cfg.vit_dim)
            self.head = nn.Linear(cfg.vit_dim, cfg.thin_depth * p * p)
        else:
            self.embed = nn.Linear(1, c)
            self.encoder = SwinStack(
                c * d, cfg.heads, (cfg.window, cfg.window), cfg.encoder_layers, cfg.mlp_ratio
            )
            if cfg.variant == "encoder_only":
                self.head = nn.Linear(c * d, cfg.thin_depth)
            else:
                self.mask_token = nn.Parameter(torch.zeros(c))
                nn.init.trunc_normal_(self.mask_token, std=0.02)
                self.fims = nn.ModuleList(FeatureInteraction(cfg) for _ in range(cfg.fim_count))
                self.head = nn.Linear(c, 1)
        if cfg.output == "residual":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def spatial_multiple(self) -> int:
        """In-plane sizes are padded to a multiple of this."""
        cfg = self.cfg
        if cfg.variant == "vit":
            return cfg.vit_patch
        if cfg.variant == "full":
            return math.lcm(cfg.window, cfg.tab_fold)
        return cfg.window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D, H, W) thick slices in [0, 1] -> (B, D', H, W) thin slices."""
        _b, d, h, w = x.shape
        if d != self.cfg.depth:
            raise ValueError(f"expected {self.cfg.depth} input slices, got {d}")
        m = self.spatial_multiple
        hp, wp = math.ceil(h / m) * m, math.ceil(w / m) * m
        xp = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate") if (hp, wp) != (h, w) else x
        out = self._forward_vit(xp) if self.cfg.variant == "vit" else self._forward_swin(xp)
        out = out[:, :, :h, :w]
        if self.cfg.output == "residual":
            out = out + torch.einsum("td,bdhw->bthw", self.interp.to(x.dtype), x)
        return out

    def _forward_swin(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, d, h, w = x.shape
        c = cfg.channels
        tokens = self.embed(x.permute(0, 2, 3, 1)[..., None]).reshape(b, h, w, d * c)
        tokens = tokens + self.encoder(tokens)
        if cfg.variant == "encoder_only":
            return self.head(tokens).permute(0, 3, 1, 2)
        thin = self.mask_token.expand(b, h, w, cfg.thin_depth, c).clone()
        thin[:, :, :, :: cfg.ratio] = tokens.view(b, h, w, d, c)
        thin = thin + depth_position_code(cfg.thin_depth, c).to(thin.device, thin.dtype)
        for fim in self.fims:
            thin = fim(thin)
        return self.head(thin).squeeze(-1).permute(0, 3, 1, 2)

    def _forward_vit(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        b, d, h, w = x.shape
        p = cfg.vit_patch
        gh, gw = h // p, w // p
        patches = x.view(b, d, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, d * p * p)
        tokens = self.patch_embed(patches) + _plane_position_code(gh, gw, cfg.vit_dim).to(x.device, x.dtype)
        for layer in self.vit:
            tokens = layer(tokens)
        out = self.head(self.vit_norm(tokens)).view(b, gh, gw, cfg.thin_depth, p, p)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, cfg.thin_depth, h, w)


def _plane_position_code(gh: int, gw: int, dim: int) -> torch.Tensor:
    """Fixed 2D sinusoidal code (gh * gw, dim): half the channels for rows, half for columns."""
    rows = depth_position_code(gh, dim // 2)[:, None].expand(gh, gw, dim // 2)
    cols = depth_position_code(gw, dim // 2)[None].expand(gh, gw, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(gh * gw, dim)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's loss: mean absolute error over all output voxels."""
    return (prediction - target).abs().mean()

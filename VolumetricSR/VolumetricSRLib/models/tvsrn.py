"""TVSRN: the transformer volumetric super-resolution network and its ablation variants.

Input: a batch of D thick slices in [0, 1], shape (B, D, H, W). Output: the (D - 1) * r + 1 thin
slices that span them, shape (B, D', H, W); output slice r * i lies on input slice i.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..intensity import HU_MAX, HU_MIN
from .network_config import OUTPUTS, VARIANTS, TVSRNConfig
from .thin_slice_network import ThinSliceNetwork

__all__ = ["OUTPUTS", "TVSRN", "VARIANTS", "TVSRNConfig"]

T = TypeVar("T")
MASKED = -1.0e4
"""Additive attention score between tokens that must not see each other: finite, so that attention
needs no guard against rows of -inf, and exp(MASKED - max) is exactly 0 in float16, bfloat16 and float32."""

CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 26}
"""Largest intermediate (tokens x features) of one chunk of a layer without autograd, per device
type: 16 MB in float32 on a CPU (the allocator reuses it instead of mapping fresh pages for every
operation), 256 MB on a GPU (kernels big enough to fill it)."""

# The ViT's patches are centred on water (0 HU) and divided by 0.1 of the [0, 1] scale (~300 HU): on the
# raw scale tissue contrast is ~1 % of a token and the layers drown it (figures: ablation_tvsrn_vit.toml).
VIT_INPUT_CENTER = (0.0 - HU_MIN) / (HU_MAX - HU_MIN)
VIT_INPUT_SCALE = 0.1
VIT_INIT_STD = 0.02

_reference_layers = False


def _chunk_elements(x: torch.Tensor) -> int:
    return CHUNK_ELEMENTS.get(x.device.type, CHUNK_ELEMENTS["cpu"])


@contextmanager
def reference_layers(enabled: bool = True) -> Iterator[None]:
    """Run Swin layers as first written (5-D attention, -inf masks, no chunks): the baseline that
    benchmarks time and tests compare the default layers against."""
    global _reference_layers
    previous, _reference_layers = _reference_layers, enabled
    try:
        yield
    finally:
        _reference_layers = previous


def _built_on_cpu(build: Callable[..., T]) -> Callable[..., T]:
    """Build cached tensors on the CPU outside inference mode, whatever the caller's context: one
    built under the predictor's inference_mode would be unusable by a later training step, one
    built under `torch.device("meta")` would hold no values."""

    @wraps(build)
    def built(*args):
        with torch.inference_mode(False), torch.device("cpu"):
            return build(*args)

    return built


@lru_cache(maxsize=64)
@_built_on_cpu
def _relative_index(wh: int, ww: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def _to_windows(grid: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(hp, wp) grid -> (nW, wh * ww): window by window, row-major inside each window."""
    (hp, wp), (wh, ww) = grid.shape, window
    return grid.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


def _region_labels(
    size: tuple[int, int], padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """(nW, N) label of each token of the shifted, padded grid; tokens of one window may attend to
    each other only when their labels are equal (same shift region, both real or both padding)."""
    (h, w), (hp, wp), (wh, ww), (sh, sw) = size, padded, window, shift
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
    return _to_windows(labels + 9 * pad.long(), window)


@lru_cache(maxsize=64)
@_built_on_cpu
def _window_mask(
    size: tuple[int, int], padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor | None:
    """Additive mask (nW, 1, N, N) of the reference layers: -inf between tokens of different labels."""
    if padded == size and shift == (0, 0):
        return None
    win = _region_labels(size, padded, window, shift)
    mask = torch.zeros(win.shape[0], win.shape[1], win.shape[1])
    mask.masked_fill_(win[:, :, None] != win[:, None, :], float("-inf"))
    return mask[:, None]


@dataclass(frozen=True)
class _WindowPlan:
    """How the tokens of one (h, w) map meet in shifted, padded windows, computed once per shape.

    Windows are ordered with those that need a mask last. `gather[s]`: the token (row-major index
    in the map) at window-order slot s, padding slots pointing at token 0; `scatter[t]`: the slot of
    token t; `pad`: (slots,) true at padding, or None; `plain`: how many windows come first that
    need no mask; `mask`: (masked windows, 1, N, N) with MASKED between tokens of different labels.
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    pad: torch.Tensor | None
    plain: int
    mask: torch.Tensor


@lru_cache(maxsize=64)
@_built_on_cpu
def _window_plan(
    size: tuple[int, int], padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> _WindowPlan:
    (h, w), (hp, wp), (sh, sw) = size, padded, shift
    rows = (torch.arange(hp) + sh) % hp
    cols = (torch.arange(wp) + sw) % wp
    pad_grid = (rows[:, None] >= h) | (cols[None, :] >= w)
    labels = _region_labels(size, padded, window, shift)
    mixed = (labels != labels[:, :1]).any(dim=1)
    order = torch.cat([(~mixed).nonzero().flatten(), mixed.nonzero().flatten()])
    source = torch.where(pad_grid, 0, rows[:, None] * w + cols[None, :])
    gather = _to_windows(source, window)[order].flatten()
    pad = _to_windows(pad_grid, window)[order].flatten()
    scatter = torch.empty(h * w, dtype=torch.long)
    scatter[gather[~pad]] = torch.arange(gather.numel())[~pad]
    sub = labels[mixed]
    mask = torch.zeros(sub.shape[0], 1, sub.shape[1], sub.shape[1])
    mask.masked_fill_(sub[:, None, :, None] != sub[:, None, None, :], MASKED)
    return _WindowPlan(gather, scatter, pad if bool(pad.any()) else None, int((~mixed).sum()), mask)


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

    def relative_bias(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(heads, N, N) additive bias from the relative positions of the tokens of a window."""
        n = self.window[0] * self.window[1]
        index = _relative_index(*self.window).to(device)
        return self.bias_table[index.view(-1)].view(n, n, self.heads).permute(2, 0, 1).to(dtype)

    def forward(self, windows: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """windows: (B, N, C) tokens; attn_mask: finite additive scores (1 or B, heads, N, N)."""
        b, n, c = windows.shape
        q, k, v = self.qkv(windows).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def reference_forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, nW, N, C) windows of tokens; mask: (nW, 1, N, N) of 0 / -inf, or None."""
        b, nw, n, c = x.shape
        qkv = self.qkv(x).view(b, nw, n, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        bias = self.relative_bias(x.device, x.dtype)
        attn_mask = bias if mask is None else bias + mask.to(x.device, x.dtype)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.proj(out.transpose(2, 3).reshape(b, nw, n, c))


class SwinLayer(nn.Module):
    """One Swin Transformer layer on a 2D token map (B, H, W, C), any H and W.

    Tokens are gathered into window order once (the windows that mix shift regions or padding
    last); fused attention runs on the others with the relative bias shared by all, and on those
    with bias + mask. Without autograd every step works on bounded chunks, in place where it can.
    """

    def __init__(self, dim: int, heads: int, window: tuple[int, int], shifted: bool, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _grid(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Padded size and shift of an (h, w) map."""
        wh, ww = self.window
        hp, wp = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
        shift = (wh // 2 if self.shifted and hp > wh else 0, ww // 2 if self.shifted and wp > ww else 0)
        return (hp, wp), shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _reference_layers:
            return self.reference_forward(x)
        b, h, w, c = x.shape
        padded, shift = self._grid(h, w)
        plan = _window_plan((h, w), padded, self.window, shift)
        grad = torch.is_grad_enabled()
        tokens = x.reshape(b, h * w, c).index_select(1, plan.gather.to(x.device))
        pad = None if plan.pad is None else plan.pad.to(x.device)
        out = torch.empty_like(tokens)
        bias = self.attn.relative_bias(x.device, x.dtype)
        self._attend(tokens, out, pad, 0, plan.plain, bias[None], grad)
        if plan.mask.numel():
            mask = bias + plan.mask.to(x.device, x.dtype)
            self._attend(tokens, out, pad, plan.plain, mask.shape[0], mask, grad)
        y = out.index_select(1, plan.scatter.to(x.device))
        if grad:
            y = y + x.reshape(b, h * w, c)
            return (y + self.mlp(self.norm2(y))).view(b, h, w, c)
        y += x.reshape(b, h * w, c)
        flat = y.view(-1, c)
        step = max(1, _chunk_elements(x) // max(3 * c, self.mlp[0].out_features))
        for s in range(0, flat.shape[0], step):
            part = flat[s : s + step]
            part += self.mlp(self.norm2(part))
        return y.view(b, h, w, c)

    def _attend(
        self,
        tokens: torch.Tensor,
        out: torch.Tensor,
        pad: torch.Tensor | None,
        first: int,
        count: int,
        attn_mask: torch.Tensor,
        grad: bool,
    ) -> None:
        """Attention of windows first ... first + count - 1 of every map, written into `out`.

        `attn_mask` is (1, heads, N, N) for all of them or (count, heads, N, N), one per window.
        """
        b, _, c = tokens.shape
        n = self.window[0] * self.window[1]
        per_window = 3 * c * n if attn_mask.shape[0] == 1 else max(3 * c * n, attn_mask[0].numel())
        step = count if grad else max(1, _chunk_elements(tokens) // (b * per_window))
        for w0 in range(first, first + count, step):
            w1 = min(w0 + step, first + count)
            normed = self.norm1(tokens[:, w0 * n : w1 * n])
            if pad is not None:
                normed = normed.masked_fill(pad[w0 * n : w1 * n, None], 0.0)
            mask = (
                attn_mask
                if attn_mask.shape[0] == 1
                else attn_mask[w0 - first : w1 - first].repeat(b, 1, 1, 1)
            )
            result = self.attn(normed.reshape(-1, n, c), mask)
            out[:, w0 * n : w1 * n] = result.view(b, -1, c)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer as first written: pad, roll, window partition, 5-D attention, reverse."""
        b, h, w, c = x.shape
        wh, ww = self.window
        (hp, wp), shift = self._grid(h, w)
        y = F.pad(self.norm1(x), (0, 0, 0, wp - w, 0, hp - h))
        if shift != (0, 0):
            y = torch.roll(y, (-shift[0], -shift[1]), dims=(1, 2))
        windows = y.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(b, -1, wh * ww, c)
        windows = self.attn.reference_forward(windows, _window_mask((h, w), (hp, wp), self.window, shift))
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
        self.stack = SwinStack(dim, cfg.heads, cfg.tab_window, cfg.tab_layers, cfg.mlp_ratio)

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
        self.axial = SwinStack(dim, cfg.heads, (cfg.window, cfg.window), cfg.axial_layers, cfg.mlp_ratio)

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


class TVSRN(ThinSliceNetwork):
    """The network; `cfg.variant` selects full, no_tab, encoder_only or vit."""

    def __init__(self, cfg: TVSRNConfig | None = None) -> None:
        super().__init__(cfg or TVSRNConfig())
        cfg = self.cfg
        c, d = cfg.channels, cfg.depth
        if cfg.variant == "vit":
            p = cfg.vit_patch
            self.patch_embed = nn.Linear(p * p, cfg.vit_dim)
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
            self.head = nn.Linear(cfg.vit_dim, self.vit_subslices * p * p)
            self.depth_mix = nn.Linear(d * self.vit_subslices, cfg.thin_depth)
            self._init_vit()
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
        self.start_at_interpolation(self.depth_mix if cfg.variant == "vit" else self.head)

    def _init_vit(self) -> None:
        """ViT-style start: small weights (std 0.02) and zero biases in every projection, so that the
        residual stream carries the patches' content rather than random layer outputs."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=VIT_INIT_STD)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=VIT_INIT_STD)
                nn.init.zeros_(module.in_proj_bias)

    @property
    def vit_subslices(self) -> int:
        """Sub-slices each thick slice's ViT token decodes into (depth-wise sub-pixel): enough that the
        depth x sub-slices maps per pixel can span every thin slice."""
        return math.ceil(self.cfg.thin_depth / self.cfg.depth)

    @property
    def spatial_multiple(self) -> int:
        """In-plane sizes are padded to a multiple of this."""
        cfg = self.cfg
        if cfg.variant == "vit":
            return cfg.vit_patch
        if cfg.variant == "full":
            return math.lcm(cfg.window, cfg.tab_fold)
        return cfg.window

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W), H and W multiples of spatial_multiple -> (B, D', H, W)."""
        return self._forward_vit(x) if self.cfg.variant == "vit" else self._forward_swin(x)

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
        """The paper's ViT ablation: one 512-d token per 1 x p x p patch of every thick slice, global
        attention over all slices' tokens, each token decoded into sub-slices of p x p pixels that a
        per-pixel linear layer mixes into the thin slices."""
        cfg = self.cfg
        b, d, h, w = x.shape
        p, k = cfg.vit_patch, self.vit_subslices
        gh, gw = h // p, w // p
        patches = x.reshape(b, d, gh, p, gw, p).permute(0, 1, 2, 4, 3, 5).reshape(b, d * gh * gw, p * p)
        patches = (patches - VIT_INPUT_CENTER) / VIT_INPUT_SCALE
        plane, slices = _plane_position_code(gh, gw, cfg.vit_dim), depth_position_code(d, cfg.vit_dim)
        position = plane[None] + slices[:, None]
        tokens = self.patch_embed(patches) + position.reshape(d * gh * gw, cfg.vit_dim).to(x.device, x.dtype)
        for layer in self.vit:
            tokens = layer(tokens)
        maps = self.head(self.vit_norm(tokens)).view(b, d, gh, gw, k, p, p)
        maps = maps.permute(0, 2, 5, 3, 6, 1, 4).reshape(b, h, w, d * k)
        return self.depth_mix(maps).permute(0, 3, 1, 2)


def _plane_position_code(gh: int, gw: int, dim: int) -> torch.Tensor:
    """Fixed 2D sinusoidal code (gh * gw, dim): half the channels for rows, half for columns."""
    rows = depth_position_code(gh, dim // 2)[:, None].expand(gh, gw, dim // 2)
    cols = depth_position_code(gw, dim // 2)[None].expand(gh, gw, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(gh * gw, dim)

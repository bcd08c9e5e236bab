"""What the CNN baselines share: TVSRN's input/output contract, residual blocks, depth sub-pixel
shuffle and the sagittal / coronal plane views of a thick window."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .baseline_config import BaselineConfig
from .network import depth_interpolation_matrix

VIEWS = ("sagittal", "coronal")


class SliceUpsampler(nn.Module):
    """Base of the baselines: (B, D, H, W) thick slices in [0, 1] -> (B, D', H, W) thin slices, output
    slice r * i on input slice i, exactly like TVSRN. In-plane sizes are padded by replication to a
    multiple of `spatial_multiple` and cropped back. With `cfg.output == "residual"` the output is linear
    interpolation plus what `predict` returns, and the layers given to `start_at_interpolation` start at
    zero, so that an untrained network predicts linear interpolation."""

    spatial_multiple = 1

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("interp", depth_interpolation_matrix(cfg.depth, cfg.ratio), persistent=False)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) with H, W multiples of spatial_multiple -> (B, D', H, W)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _b, d, h, w = x.shape
        if d != self.cfg.depth:
            raise ValueError(f"expected {self.cfg.depth} input slices, got {d}")
        m = self.spatial_multiple
        hp, wp = math.ceil(h / m) * m, math.ceil(w / m) * m
        xp = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate") if (hp, wp) != (h, w) else x
        out = self.predict(xp)[:, :, :h, :w]
        if self.cfg.output == "residual":
            out = out + torch.einsum("td,bdhw->bthw", self.interp.to(x.dtype), x)
        return out

    def start_at_interpolation(self, *layers: nn.Module) -> None:
        """Zero the weights and biases of the output layers when the output is residual."""
        if self.cfg.output == "residual":
            for layer in layers:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)


class ResidualBlock(nn.Module):
    """conv - ReLU - conv plus the input (EDSR's block, no normalisation), 2D or 3D, 3-wide kernels."""

    def __init__(self, channels: int, dims: int) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.body = nn.Sequential(
            conv(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            conv(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def residual_stack(channels: int, blocks: int, dims: int) -> nn.Sequential:
    """`blocks` residual blocks and a closing convolution (the body of a global skip connection)."""
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    return nn.Sequential(
        *(ResidualBlock(channels, dims) for _ in range(blocks)), conv(channels, channels, 3, padding=1)
    )


def depth_shuffle(x: torch.Tensor, ratio: int, thin_depth: int) -> torch.Tensor:
    """Sub-pixel upsampling along depth (axis 2): (N, C * r, D, ...) -> (N, C, D', ...), where output
    slice d * r + k comes from channel group k at slice d; the D * r slices are cut to D'."""
    c = x.shape[1] // ratio
    shuffled = x.unflatten(1, (c, ratio)).movedim(2, 3).flatten(2, 3)
    return shuffled[:, :, :thin_depth]


def planes(x: torch.Tensor, view: str, neighbours: int = 1) -> torch.Tensor:
    """(B, D, H, W) -> the view's planes as images (N, neighbours, D, L): sagittal (depth x height, one
    per column, N = B * W) or coronal (depth x width, one per row, N = B * H). The channels are the plane
    and its neighbours on either side, edges repeated."""
    b, d, h, w = x.shape
    k = neighbours // 2
    if view == "sagittal":
        stacks = F.pad(x, (k, k, 0, 0), mode="replicate").unfold(3, neighbours, 1)  # (B, D, H, W, n)
        return stacks.permute(0, 3, 4, 1, 2).reshape(b * w, neighbours, d, h)
    stacks = F.pad(x, (0, 0, k, k), mode="replicate").unfold(2, neighbours, 1)  # (B, D, H, W, n)
    return stacks.permute(0, 2, 4, 1, 3).reshape(b * h, neighbours, d, w)


def unplanes(y: torch.Tensor, batch: int, view: str) -> torch.Tensor:
    """Inverse of `planes` for single-channel results: (N, 1, D', L) -> (B, D', H, W)."""
    n, _, d, length = y.shape
    grid = y.view(batch, n // batch, d, length)
    return grid.permute(0, 2, 3, 1) if view == "sagittal" else grid.permute(0, 2, 1, 3)

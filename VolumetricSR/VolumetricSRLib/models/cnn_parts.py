"""What the CNN baselines share beyond TVSRN's input/output contract (network.ThinSliceNetwork):
residual blocks, depth sub-pixel shuffle and the sagittal / coronal plane views of a thick window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VIEWS = ("sagittal", "coronal")


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

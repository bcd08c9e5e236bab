"""What every network here shares (TVSRN and the CNN baselines): the thick-to-thin contract with
in-plane padding and the optional interpolation-plus-residual output, the interpolation matrix along
depth, the parameter count and the paper's loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import ModelConfig


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


class ThinSliceNetwork(nn.Module):
    """The contract of every network here (TVSRN and the CNN baselines): (B, D, H, W) thick slices in
    [0, 1] -> (B, D', H, W) thin slices, output slice r * i on input slice i. In-plane sizes are padded
    by replication to a multiple of `spatial_multiple` and cropped back. With `cfg.output ==
    "residual"` the output is linear interpolation plus what `predict` returns."""

    spatial_multiple = 1

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("interp", depth_interpolation_matrix(cfg.depth, cfg.ratio), persistent=False)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) with H, W multiples of spatial_multiple -> (B, D', H, W)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D, H, W) thick slices in [0, 1] -> (B, D', H, W) thin slices."""
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
        """Zero the weights and biases of the output layers when the output is residual, so that the
        untrained network predicts linear interpolation."""
        if self.cfg.output == "residual":
            for layer in layers:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's loss: mean absolute error over all output voxels."""
    return F.l1_loss(prediction, target)

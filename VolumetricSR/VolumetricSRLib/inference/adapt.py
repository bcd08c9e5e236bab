"""Adapt a model to one scan before it predicts: a short fine-tuning of a copy of the network on
self-supervised pairs made from the scan itself (no thin data needed).

A thick scan's in-plane pixels (0.5-1 mm) are finer than its slices: an in-plane axis averaged with a
box of `ratio` pixels gives thick/thin pairs with the scan's own noise, kernel and anatomy (the idea of
SMORE and SR4ZCT, and of DA-VSR's test-time adaptation). In such a pair the network's in-plane plane
holds the scan's slice axis, so the pairs teach texture, not the in-plane prior: the adaptation is
short, starts from the model, and is kept only when it raises the PSNR on pairs it did not train on
(the last fifth of each in-plane axis); otherwise the model is used as it was, and the result says so.
The model itself is never changed: the adaptation works on a copy, in memory.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import InputError
from ..intensity import HU_MAX, HU_MIN, hu_to_unit
from ..models.model_cards import ModelCard
from .consistency import slab_profile
from .device import resolve_device

BODY_HU = -500.0  # voxels above this count as body, not air
HELD_OUT_SHARE = 0.2  # the last fifth of each in-plane axis: pairs never trained on


@dataclass(frozen=True)
class AdaptOptions:
    """How long and how an adaptation runs (`steps` 0: none)."""

    steps: int = 0
    batch: int = 2
    crop: int = 64
    lr: float = 1e-4
    held_out_pairs: int = 16
    seed: int = 0


@dataclass(frozen=True)
class Adaptation:
    """What an adaptation did: steps, seconds, the PSNR (dB, on the card's window, as model cards
    report) on held-out pairs of the scan before and after, and whether the adapted network was used
    (only when it raised that PSNR)."""

    steps: int
    seconds: float
    psnr_before: float
    psnr_after: float
    used: bool

    def line(self) -> str:
        """One line for people and for the output's labels."""
        verdict = "used" if self.used else "not used: it did not raise the PSNR, the model ran as it was"
        gain = self.psnr_after - self.psnr_before
        return (
            f"adapted to this scan: {self.steps} steps in {self.seconds:.0f} s; held-out in-plane pairs "
            f"{self.psnr_before:.3f} -> {self.psnr_after:.3f} dB PSNR ({gain:+.3f} dB, {verdict})"
        )


class ScanPairs:
    """Thick/thin pairs along the in-plane axes of one thick scan (K, J, I) on the network's scale."""

    def __init__(
        self,
        unit: np.ndarray,
        depth: int,
        ratio: int,
        crop: int,
        window: tuple[float, float] = (HU_MIN, HU_MAX),
    ) -> None:
        self.depth, self.ratio = depth, ratio
        self.thin = (depth - 1) * ratio + 1
        self.weights = box_weights(ratio)
        self.margin = len(self.weights) // 2
        # each in-plane axis as the depth axis: (J, K, I) and (I, K, J)
        views = (unit.transpose(1, 0, 2), unit.transpose(2, 0, 1))
        self.views = [np.ascontiguousarray(v) for v in views if self.span(v) >= self.thin + 2 * self.margin]
        if not self.views:
            least = 5 * (self.thin + 2 * self.margin)
            raise InputError(
                f"the scan's in-plane size {unit.shape[1]} x {unit.shape[2]} is too small for pairs of "
                f"{self.thin} thin rows: adaptation needs at least {least} pixels; leave out --adapt"
            )
        self.crop = crop
        self.body = float(hu_to_unit(np.array([BODY_HU]), window)[0])  # on the scale `unit` is on

    def span(self, view: np.ndarray) -> int:
        """Rows of a view's depth axis kept for held-out pairs (its last fifth)."""
        return int(view.shape[0] * HELD_OUT_SHARE)

    def pair(self, rng: np.random.Generator, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        """One pair: thick (D, h, w) and thin (D', h, w), from the trained or the held-out rows."""
        view = self.views[int(rng.integers(len(self.views)))]
        rows = view.shape[0]
        reach = self.thin + 2 * self.margin
        lo, hi = (rows - self.span(view), rows - reach) if held_out else (0, rows - self.span(view) - reach)
        # (the views kept have span >= reach, so both ranges hold at least one start)
        h, w = min(self.crop, view.shape[1]), min(self.crop, view.shape[2])
        for _ in range(10):  # prefer crops that hold body, not air
            start = int(rng.integers(lo, hi + 1))
            y, x = int(rng.integers(view.shape[1] - h + 1)), int(rng.integers(view.shape[2] - w + 1))
            block = view[start : start + reach, y : y + h, x : x + w]
            if (block > self.body).mean() >= 0.2:
                break
        thin = block[self.margin : self.margin + self.thin]
        centres = self.margin + self.ratio * np.arange(self.depth)
        taps = np.arange(len(self.weights)) - self.margin
        thick = np.einsum("t,dthw->dhw", self.weights, block[centres[:, None] + taps[None, :]])
        if not held_out and rng.random() < 0.5:
            thick, thin = thick[..., ::-1], thin[..., ::-1]
        return np.ascontiguousarray(thick, dtype=np.float32), np.ascontiguousarray(thin, dtype=np.float32)

    def batch(
        self, rng: np.random.Generator, size: int, held_out: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` pairs stacked: thick (B, D, h, w) and thin (B, D', h, w)."""
        pairs = [self.pair(rng, held_out) for _ in range(size)]
        thick, thin = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        return torch.from_numpy(thick), torch.from_numpy(thin)


def box_weights(ratio: int) -> np.ndarray:
    """Taps of a box slab `ratio` thin slices wide centred on a thin slice (half taps at the ends when
    `ratio` is even)."""
    if ratio % 2:
        return slab_profile(ratio, "box")
    taps = np.ones(ratio + 1)
    taps[[0, -1]] = 0.5
    return taps / ratio


def adapt_to_scan(
    model: nn.Module,
    card: ModelCard,
    thick_hu: np.ndarray,
    options: AdaptOptions,
    device: str = "cpu",
    progress: Callable[[float, str], None] | None = None,
) -> tuple[nn.Module, Adaptation]:
    """A copy of `model` fine-tuned on pairs from the scan (K, J, I) (slice axis first), and what it did;
    the model itself when the copy does not raise the PSNR on held-out pairs."""
    start = time.perf_counter()
    device = str(resolve_device(device))
    window = card.window
    pairs = ScanPairs(hu_to_unit(thick_hu, window), card.config.depth, card.ratio, options.crop, window)
    held_out = pairs.batch(np.random.default_rng([options.seed, 1]), options.held_out_pairs, held_out=True)
    adapted = copy.deepcopy(model).to(device)
    before = held_out_psnr(adapted, held_out, device)
    optimizer = torch.optim.Adam(adapted.parameters(), lr=options.lr)
    rng = np.random.default_rng([options.seed, 0])
    adapted.train()
    for step in range(options.steps):
        thick, thin = (t.to(device) for t in pairs.batch(rng, options.batch))
        loss = F.l1_loss(adapted(thick), thin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapted.parameters(), 1.0)
        optimizer.step()
        if progress is not None:
            progress((step + 1) / options.steps, f"adapting to this scan: step {step + 1}/{options.steps}")
    adapted.eval()
    after = held_out_psnr(adapted, held_out, device)
    used = after > before
    result = Adaptation(options.steps, time.perf_counter() - start, before, after, used)
    return (adapted if used else model), result


@torch.inference_mode()
def held_out_psnr(model: nn.Module, pairs: tuple[torch.Tensor, torch.Tensor], device: str) -> float:
    """PSNR (dB) of the network over all pairs on its [0, 1] scale (the output clamped as predicted)."""
    model.eval()
    thick, thin = (t.to(device) for t in pairs)
    squared = [
        F.mse_loss(model(thick[i : i + 1]).clamp(0.0, 1.0), thin[i : i + 1], reduction="sum").item()
        for i in range(thick.shape[0])
    ]
    return -10.0 * math.log10(max(math.fsum(squared) / thin.numel(), 1e-12))

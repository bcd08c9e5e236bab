"""Pseudo thick/thin pairs from thin-only CT: thick slices simulated by slab averaging.

The world placement (thick slice k at the centre of thin slices r k ... r k + r - 1) and the plain
box mean come from the core (`VolumetricSRLib.phantom.simulate_thick`, `truth_slices`), and so do
the slab profiles (`VolumetricSRLib.inference.consistency.slab_profile`, which the consistency check of a
prediction re-thickens with): one definition serves the phantom, the training crops, the evaluation
and the check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from VolumetricSRLib.geometry import thin_grid
from VolumetricSRLib.inference.consistency import slab_profile
from VolumetricSRLib.phantom import simulate_thick, truth_slices

_NO_GEOMETRY = np.eye(4)


def simulate_thick_slices(thin: np.ndarray, ratio: int, slab: str = "box") -> np.ndarray:
    """Thick slice k = profile-weighted mean of thin slices r k ... r k + r - 1 (axis 0), float32."""
    if slab == "box":
        return simulate_thick(thin, _NO_GEOMETRY, ratio)[0]
    profile = slab_profile(ratio, slab)
    thick = simulate_thick(thin, _NO_GEOMETRY, ratio)[0]  # validates shape and ratio
    slabs = np.asarray(thin, dtype=np.float32)[: thick.shape[0] * ratio]
    slabs = slabs.reshape(thick.shape[0], ratio, *thick.shape[1:])
    return np.tensordot(profile.astype(np.float32), slabs, axes=([0], [1])).astype(np.float32)


def first_matching_thin_slice(ratio: int) -> int:
    """Index of the thin slice the first simulated thick slice lies on (odd ratios only)."""
    return truth_slices(1, ratio).start


@dataclass
class PseudoPair:
    """A simulated thick scan and the thin truth on its thin grid (all HU, (K, J, I))."""

    thick: np.ndarray
    thick_affine: np.ndarray
    truth: np.ndarray
    truth_affine: np.ndarray


def make_pseudo_pair(thin: np.ndarray, thin_affine: np.ndarray, ratio: int, slab: str = "box") -> PseudoPair:
    """Simulate the thick scan of a thin volume and cut the thin slices that lie on its thin grid."""
    thick, thick_affine = simulate_thick(thin, thin_affine, ratio)
    if slab != "box":
        thick = simulate_thick_slices(thin, ratio, slab)
    truth = np.asarray(thin, dtype=np.float32)[truth_slices(thick.shape[0], ratio)]
    return PseudoPair(thick, thick_affine, truth, thin_grid(thick_affine, thick.shape[0], ratio).affine)


AUGMENT_PROFILES = ("box", "gaussian", "trapezoid")
REACH = 1.0
"""Half the support of every augmentation profile, in units of its full width at half maximum."""
SUBSAMPLES = 16


def slab_weights(ratio: int, kind: str, width: float) -> tuple[np.ndarray, int]:
    """Weights of the thin slices that make one thick slice under a slab profile of full width at half
    maximum `width` thin slices, centred on the slab of `ratio` slices: (weights over ratio + 2 m slices,
    summing to 1; m, the slices taken beyond the slab on each side). Each thin slice counts with the
    profile's mean over its own one-slice bin. "box": flat; "gaussian": cut at one FWHM from the
    centre; "trapezoid": flat over the central half of the FWHM, falling linearly to 0 at 1.5 FWHM."""
    if kind not in AUGMENT_PROFILES:
        raise ValueError(f"unknown slab profile {kind!r} for augmentation: use {', '.join(AUGMENT_PROFILES)}")
    if width <= 0:
        raise ValueError(f"the slab width must be positive, got {width}")
    margin = max(0, math.ceil(REACH * width - ratio / 2 - 1e-9))
    centres = np.arange(ratio + 2 * margin) - margin - (ratio - 1) / 2
    x = np.abs(centres[:, None] + (np.arange(SUBSAMPLES) + 0.5) / SUBSAMPLES - 0.5)
    if kind == "box":
        values = (x < width / 2).astype(np.float64)
    elif kind == "gaussian":
        sigma = width / (2 * math.sqrt(2 * math.log(2)))
        values = np.exp(-0.5 * (x / sigma) ** 2) * (x <= REACH * width)
    else:
        values = np.clip((0.75 * width - x) / (0.5 * width), 0.0, 1.0)
    weights = values.mean(axis=1)
    return weights / weights.sum(), margin


@dataclass(frozen=True)
class SlabAugmentation:
    """Each pseudo pair's thick slices from a profile drawn from `kinds`, its width drawn uniformly in
    `widths` x the ratio (e.g. (0.8, 1.2): +-20 %), so that real scanners' slice profiles lie inside
    the training distribution."""

    kinds: tuple[str, ...]
    widths: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        for kind in self.kinds:
            slab_weights(5, kind, 5.0)  # an unknown profile is refused now
        low, high = self.widths
        if not 0.5 <= low <= high <= 2.0 or not self.kinds:
            raise ValueError(
                f"slab augmentation needs profiles and widths 0.5 <= low <= high <= 2, got {self.kinds}, "
                f"{self.widths}"
            )

    def margin(self, ratio: int) -> int:
        """Thin slices a crop needs beyond its slabs on each side for the widest profile."""
        return max(0, math.ceil(REACH * self.widths[1] * ratio - ratio / 2 - 1e-9))

    def thick_slices(self, block: np.ndarray, ratio: int, depth: int, rng: np.random.Generator) -> np.ndarray:
        """`depth` thick slices from a block of depth x ratio thin slices plus margin(ratio) on each side."""
        kind = self.kinds[rng.integers(len(self.kinds))]
        weights, m = slab_weights(ratio, kind, rng.uniform(*self.widths) * ratio)
        start = self.margin(ratio) - m
        slabs = [block[start + ratio * k : start + ratio * k + len(weights)] for k in range(depth)]
        return np.stack([np.tensordot(weights, slab, axes=(0, 0)) for slab in slabs]).astype(np.float32)

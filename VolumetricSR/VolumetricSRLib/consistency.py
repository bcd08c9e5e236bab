"""Consistency of a thin prediction with the measured thick slices (no ground truth needed).

A thick slice is a slab of r thin slices (the model card's slab profile, box by default). On the thin
grid, thick slice k sits on thin slice r k, so its slab is thin slices r k - (r - 1) / 2 ...
r k + (r - 1) / 2. Re-thickening the prediction with the same profile and comparing it with the
input, slab by slab, says how far the network strayed from what the scanner measured. The first
and last thick slices have only half a slab on the thin grid and are not compared.

Both sides are compared inside the model's intensity window (the network sees the input clipped to
it and can only answer inside it). `enforce_consistency` adds to every thin slice of a full slab
the per-pixel difference between the measured thick slice and the re-thickened prediction, which
makes each re-thickened slab equal the measured slice (the profile sums to one); for a box profile
this is the orthogonal projection onto the predictions that agree with the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import odd_ratio

SLABS = ("box", "gaussian")


def slab_profile(ratio: int, kind: str = "box") -> np.ndarray:
    """Weights of the r thin slices that make one thick slice (sum 1).

    "box": plain mean (a reconstruction with slab = spacing); "gaussian": FWHM of r slices,
    centred on the slab, as a smoother slice-sensitivity profile.
    """
    if kind == "box":
        return np.full(ratio, 1.0 / ratio)
    if kind == "gaussian":
        offsets = np.arange(ratio) - (ratio - 1) / 2
        sigma = ratio / 2.3548
        weights = np.exp(-0.5 * (offsets / sigma) ** 2)
        return weights / weights.sum()
    raise ValueError(f"unknown slab profile {kind!r}: use one of {', '.join(SLABS)}")


@dataclass(frozen=True)
class Consistency:
    """Mean absolute HU difference between re-thickened prediction and measured thick slices."""

    mean_abs_hu: float  # over every pixel of every compared slab
    per_slab_hu: tuple[float, ...]  # one per compared thick slice, thick slices 1 ... K - 2
    worst_slab: int  # index of the thick slice with the largest mean absolute difference
    worst_abs_hu: float
    slab: str

    def summary(self) -> dict:
        """JSON-ready card of the check."""
        return {
            "mean_abs_hu": round(self.mean_abs_hu, 3),
            "worst_slab": self.worst_slab,
            "worst_abs_hu": round(self.worst_abs_hu, 3),
            "slabs_compared": len(self.per_slab_hu),
            "slab_profile": self.slab,
        }

    def line(self) -> str:
        """One line for a status bar or a header field."""
        return (
            f"consistency with the measured slices: mean |re-thickened - measured| {self.mean_abs_hu:.1f} HU "
            f"over {len(self.per_slab_hu)} slabs, worst slab {self.worst_slab} ({self.worst_abs_hu:.1f} HU)"
        )


def rethicken(thin: np.ndarray, ratio: int, slab: str = "box") -> np.ndarray:
    """Thick slices 1 ... K - 2 re-made from a thin ((K - 1) r + 1, J, I) volume: (K - 2, J, I) float64."""
    profile = slab_profile(odd_ratio(ratio), slab)
    thick_count = _thick_count(np.shape(thin)[0], ratio)
    half = (ratio - 1) // 2
    values = np.asarray(thin, dtype=np.float64)
    slabs = [values[ratio * k - half : ratio * k + half + 1] for k in range(1, thick_count - 1)]
    return np.stack([np.tensordot(profile, s, axes=(0, 0)) for s in slabs]) if slabs else values[:0]


def check_consistency(
    thin_hu: np.ndarray,
    thick_hu: np.ndarray,
    ratio: int,
    window: tuple[float, float],
    slab: str = "box",
) -> Consistency:
    """Compare the re-thickened thin prediction with the measured thick slices (both HU, (K, J, I))."""
    thick = _inner_thick(thin_hu, thick_hu, ratio, window)
    differences = np.abs(rethicken(np.clip(thin_hu, *window), ratio, slab) - thick)
    per_slab = differences.reshape(differences.shape[0], -1).mean(axis=1)
    worst = int(np.argmax(per_slab))
    return Consistency(
        mean_abs_hu=float(differences.mean()),
        per_slab_hu=tuple(float(v) for v in per_slab),
        worst_slab=worst + 1,
        worst_abs_hu=float(per_slab[worst]),
        slab=slab,
    )


def enforce_consistency(
    thin_hu: np.ndarray,
    thick_hu: np.ndarray,
    ratio: int,
    window: tuple[float, float],
    slab: str = "box",
) -> np.ndarray:
    """A corrected copy (float32) of the thin prediction whose full slabs re-thicken to the measured
    slices; clipped to the window afterwards, which can leave a difference where the window binds."""
    thick = _inner_thick(thin_hu, thick_hu, ratio, window)
    corrected = np.clip(np.asarray(thin_hu, dtype=np.float64), *window)
    shortfall = thick - rethicken(corrected, ratio, slab)
    half = (ratio - 1) // 2
    for n, k in enumerate(range(1, thick.shape[0] + 1)):
        corrected[ratio * k - half : ratio * k + half + 1] += shortfall[n]
    return np.clip(corrected, *window).astype(np.float32)


def _inner_thick(thin_hu: np.ndarray, thick_hu: np.ndarray, ratio: int, window) -> np.ndarray:
    """The measured thick slices 1 ... K - 2, clipped to the window, after checking both grids."""
    thick_hu = np.asarray(thick_hu)
    if np.ndim(thin_hu) != 3 or thick_hu.ndim != 3:
        raise ValueError("the consistency check needs (K, J, I) thin and thick volumes")
    expected = (thick_hu.shape[0] - 1) * ratio + 1
    if np.shape(thin_hu) != (expected, *thick_hu.shape[1:]):
        raise ValueError(
            f"a thin volume of shape {np.shape(thin_hu)} is not the x{ratio} grid of a thick volume of "
            f"shape {thick_hu.shape} (expected {(expected, *thick_hu.shape[1:])})"
        )
    if thick_hu.shape[0] < 3:
        raise ValueError(f"{thick_hu.shape[0]} thick slices leave no full slab to compare; need at least 3")
    return np.clip(thick_hu[1:-1].astype(np.float64), *window)


def _thick_count(thin_slices: int, ratio: int) -> int:
    return (thin_slices - 1) // ratio + 1

"""Resampling of a thin volume along its slice axis (array axis 0) to another slice spacing.

The network makes slices input spacing / r apart; `--spacing` asks for another spacing. The thin
volume is resampled with scipy's cubic B-spline (interpolating: the spline passes through every
thin slice, 'mirror' boundary) at positions n * spacing / native spacing, in thin slice units, with
the weights of `interpolation.spline_weights`: one float32 matrix product.
"""

from __future__ import annotations

import numpy as np

from ..geometry import SPACING_TOLERANCE
from .interpolation import spline_weights

SAME_SPACING = 1e-3
"""Relative difference under which the requested spacing is the model's own: no resampling."""


def is_native_spacing(native_mm: float, spacing_mm: float) -> bool:
    """Whether `spacing_mm` is the model's own output spacing (within SAME_SPACING)."""
    return abs(spacing_mm - native_mm) <= SAME_SPACING * native_mm


def resampling_positions(native_mm: float, spacing_mm: float, slices: int) -> np.ndarray:
    """Positions of `slices` output slices `spacing_mm` apart, in units of thin slices `native_mm` apart."""
    return np.arange(slices, dtype=np.float64) * (spacing_mm / native_mm)


def resample_slices(volume: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Cubic B-spline values of a (N, J, I) volume at `positions` along axis 0: (len(positions), J, I)
    float32. Positions must lie within 0 ... N - 1 up to a relative slack (twice the one
    geometry.spaced_grid allows when it counts the output slices); they are clipped to it."""
    volume = np.asarray(volume)
    positions = np.asarray(positions, dtype=np.float64)
    last = volume.shape[0] - 1
    slack = 2 * SPACING_TOLERANCE * max(last, 1)
    if positions.size and (positions.min() < -slack or positions.max() > last + slack):
        raise ValueError(f"resampling positions must lie within 0 ... {last}")
    positions = np.clip(positions, 0, last)
    weights = spline_weights(volume.shape[0], positions, order=3).astype(np.float32)
    return np.tensordot(weights, volume.astype(np.float32, copy=False), axes=(1, 0))

"""Baseline slice interpolation onto the thin grid (linear and cubic B-spline along the slice axis).

Thin slice j lies at thick slice position j / r (the geometry rule), so the output has
(K - 1) * r + 1 slices and thin slice r * k is thick slice k. Only the slice axis is interpolated.

Cubic: the interpolating cubic B-spline of scipy.ndimage (coefficients from
`ndimage.spline_filter1d`) with the 'mirror' boundary: the signal continues as its reflection
about the first and last slice (... s2 s1 | s0 s1 s2 ...). It passes through every thick slice and
reproduces cubic polynomials exactly away from the two ends.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .checks import is_positive_whole_number
from .geometry import thin_slice_count
from .network import depth_interpolation_matrix

ORDERS = {1: "linear", 3: "cubic"}


def interpolate_slices(thick: np.ndarray, ratio: int, order: int) -> np.ndarray:
    """Interpolate a thick (K, J, I) volume onto its thin grid: ((K - 1) * r + 1, J, I) float32."""
    thick = np.asarray(thick)
    if thick.ndim != 3:
        raise ValueError(f"interpolation needs a (K, J, I) volume, got shape {thick.shape}")
    if thick.shape[0] < 2:
        raise ValueError(f"interpolation needs at least 2 slices, got {thick.shape[0]}")
    if not is_positive_whole_number(ratio):
        raise ValueError(f"the ratio must be a positive integer, got {ratio!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be 1 (linear) or 3 (cubic), got {order!r}")
    values = thick.astype(np.float64)
    if order == 1:
        weights = depth_interpolation_matrix(thick.shape[0], int(ratio)).double().numpy()
    else:
        values = ndimage.spline_filter1d(values, order=3, axis=0, mode="mirror")
        weights = cubic_bspline_matrix(thick.shape[0], int(ratio))
    return np.tensordot(weights, values, axes=(1, 0)).astype(np.float32)


def cubic_bspline_matrix(slices: int, ratio: int) -> np.ndarray:
    """((K - 1) * r + 1, K) weights that evaluate mirror-extended cubic B-spline coefficients at j / r."""
    positions = np.arange(thin_slice_count(slices, ratio)) / ratio
    base = np.floor(positions).astype(int)
    matrix = np.zeros((positions.size, slices))
    last = slices - 1
    for shift in (-1, 0, 1, 2):
        knots = base + shift
        weights = _cubic_bspline(positions - knots)
        folded = np.mod(knots, 2 * last)
        mirrored = np.where(folded > last, 2 * last - folded, folded)
        np.add.at(matrix, (np.arange(positions.size), mirrored), weights)
    return matrix


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    """The centred cubic B-spline basis function."""
    t = np.abs(t)
    inner = 2.0 / 3.0 - t**2 + t**3 / 2.0
    outer = (2.0 - t) ** 3 / 6.0
    return np.where(t < 1.0, inner, np.where(t < 2.0, outer, 0.0))

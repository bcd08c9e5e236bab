"""Baseline slice interpolation onto the thin grid: nearest, linear, cubic B-spline, Lanczos.

Thin slice j lies at thick slice position j / r (the geometry rule), so the output has
(K - 1) * r + 1 slices and thin slice r * k is thick slice k. Only the slice axis is interpolated.

Nearest, linear and cubic are scipy.ndimage's splines sampled at j / r (the values of `ndimage.zoom`
with `grid_mode=False`) with the 'mirror' boundary (... s2 s1 | s0 s1 s2 ...). They act along one
axis only, so their (thin, K) weights are found once by interpolating the identity and the volume is
one float32 matrix product: the values of zooming the volume (within 2e-6 on unit noise), and on a
512 x 512 x 60 volume (-> 296 slices) 1.1 s for cubic and 0.6 s for linear where zooming the volume
took 17.2 s and 5.5 s (2-core CPU, 2026-11-29, /tmp timing script; no float64 copy of the volume).
Lanczos (a = 3, windowed sinc) is not in scipy: its weights are computed here, mirrored the same
way and normalised to sum to one per thin slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..checks import is_positive_whole_number
from ..geometry import thin_slice_count

SPLINE_ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}
METHODS = (*SPLINE_ORDERS, "lanczos")
LANCZOS_LOBES = 3


def interpolate_slices(thick: np.ndarray, ratio: int, method: str) -> np.ndarray:
    """Interpolate a thick (K, J, I) volume onto its thin grid: ((K - 1) * r + 1, J, I) float32."""
    thick = np.asarray(thick)
    if thick.ndim != 3:
        raise ValueError(f"interpolation needs a (K, J, I) volume, got shape {thick.shape}")
    weights = slice_weights(thick.shape[0], ratio, method).astype(np.float32)
    return np.tensordot(weights, thick.astype(np.float32, copy=False), axes=(1, 0))


def slice_weights(slices: int, ratio: int, method: str) -> np.ndarray:
    """((K - 1) * r + 1, K) float64 weights: thin slice j = sum over k of w[j, k] * thick slice k."""
    if slices < 2:
        raise ValueError(f"interpolation needs at least 2 slices, got {slices}")
    if not is_positive_whole_number(ratio):
        raise ValueError(f"the ratio must be a positive integer, got {ratio!r}")
    if method not in METHODS:
        raise ValueError(f"unknown interpolation {method!r}; choose one of {', '.join(METHODS)}")
    if method == "lanczos":
        return _lanczos_weights(slices, int(ratio))
    positions = np.arange(thin_slice_count(slices, int(ratio))) / ratio
    return spline_weights(slices, positions, SPLINE_ORDERS[method])


def spline_weights(slices: int, positions: np.ndarray, order: int) -> np.ndarray:
    """(len(positions), slices) float64 weights of scipy's interpolating spline of `order` (mirror
    boundary) along one axis: output n = sum over k of w[n, k] * slice k, at slice position n."""
    rows, columns = np.meshgrid(positions, np.arange(slices, dtype=np.float64), indexing="ij")
    return ndimage.map_coordinates(np.eye(slices), [rows, columns], order=order, mode="mirror")


def _lanczos_weights(slices: int, ratio: int) -> np.ndarray:
    """Lanczos-3 weights at positions j / r, taps mirrored at the first and last slice."""
    positions = np.arange(thin_slice_count(slices, ratio)) / ratio
    base = np.floor(positions).astype(int)
    matrix = np.zeros((positions.size, slices))
    last = slices - 1
    for shift in range(1 - LANCZOS_LOBES, LANCZOS_LOBES + 1):
        taps = base + shift
        distance = positions - taps
        kernel = np.sinc(distance) * np.sinc(distance / LANCZOS_LOBES)
        folded = np.mod(taps, 2 * last)
        mirrored = np.where(folded > last, 2 * last - folded, folded)
        np.add.at(matrix, (np.arange(positions.size), mirrored), kernel)
    return matrix / matrix.sum(axis=1, keepdims=True)

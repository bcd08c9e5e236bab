"""Linear and cubic B-spline slice interpolation onto the thin grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from VolumetricSRLib.interpolation import cubic_bspline_matrix, interpolate_slices


def _along_slices(values: np.ndarray, rows: int = 3, cols: int = 2) -> np.ndarray:
    """A (K, rows, cols) volume whose every column is `values` plus a per-pixel offset."""
    offsets = np.arange(rows * cols, dtype=np.float64).reshape(1, rows, cols)
    return values[:, None, None] + offsets


@pytest.mark.parametrize("ratio", [1, 3, 5])
@pytest.mark.parametrize("order", [1, 3])
def test_thin_slice_r_k_is_thick_slice_k(ratio, order):
    thick = np.random.default_rng(ratio).normal(0, 300, (7, 4, 5)).astype(np.float32)
    thin = interpolate_slices(thick, ratio, order)
    assert thin.shape == (6 * ratio + 1, 4, 5)
    assert thin.dtype == np.float32
    np.testing.assert_allclose(thin[::ratio], thick, rtol=0, atol=1e-3)


def test_linear_is_exact_on_a_ramp():
    thick = _along_slices(10.0 * np.arange(6))
    thin = interpolate_slices(thick, 5, order=1)
    np.testing.assert_allclose(thin, _along_slices(10.0 * np.arange(26) / 5), atol=1e-5)


def test_cubic_reproduces_a_cubic_polynomial_away_from_the_ends():
    def cubic(z):
        return 0.01 * z**3 - 0.2 * z**2 + z + 3.0

    thick = _along_slices(cubic(np.arange(30.0)))
    thin = interpolate_slices(thick, 5, order=3)
    expected = _along_slices(cubic(np.arange(146) / 5))
    np.testing.assert_allclose(thin[40:-40], expected[40:-40], rtol=1e-5)
    linear = interpolate_slices(thick, 5, order=1)
    assert np.abs(linear[40:-40] - expected[40:-40]).max() > 0.01  # linear cannot follow the curve


def test_cubic_is_scipys_mirror_boundary_spline():
    thick = np.random.default_rng(4).random((6, 2, 3))
    positions = np.arange(26) / 5
    reference = np.stack(
        [
            [ndimage.map_coordinates(thick[:, j, i], [positions], order=3, mode="mirror") for i in range(3)]
            for j in range(2)
        ]
    ).transpose(2, 0, 1)
    np.testing.assert_allclose(interpolate_slices(thick, 5, order=3), reference, atol=1e-6)


def test_cubic_weights_sum_to_one_for_two_slices():
    matrix = cubic_bspline_matrix(2, 5)
    assert matrix.shape == (6, 2)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("thick", "ratio", "order", "fragment"),
    [
        (np.zeros((5, 4)), 5, 1, r"\(K, J, I\)"),
        (np.zeros((1, 4, 4)), 5, 1, "at least 2 slices"),
        (np.zeros((3, 4, 4)), 0, 1, "positive integer"),
        (np.zeros((3, 4, 4)), 2.5, 3, "positive integer"),
        (np.zeros((3, 4, 4)), 5, 2, "order must be 1"),
    ],
)
def test_bad_arguments_are_refused(thick, ratio, order, fragment):
    with pytest.raises(ValueError, match=fragment):
        interpolate_slices(thick, ratio, order)

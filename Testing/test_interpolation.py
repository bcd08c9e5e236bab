"""Slice interpolation onto the thin grid: nearest, linear, cubic B-spline (scipy) and Lanczos."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from VolumetricSRLib.inference.interpolation import METHODS, interpolate_slices, slice_weights


def _along_slices(values: np.ndarray, rows: int = 3, cols: int = 2) -> np.ndarray:
    """A (K, rows, cols) volume whose every column is `values` plus a per-pixel offset."""
    offsets = np.arange(rows * cols, dtype=np.float64).reshape(1, rows, cols)
    return values[:, None, None] + offsets


@pytest.mark.parametrize("ratio", [1, 3, 5])
@pytest.mark.parametrize("method", METHODS)
def test_thin_slice_r_k_is_thick_slice_k(ratio, method):
    thick = np.random.default_rng(ratio).normal(0, 300, (7, 4, 5)).astype(np.float32)
    thin = interpolate_slices(thick, ratio, method)
    assert thin.shape == (6 * ratio + 1, 4, 5)
    assert thin.dtype == np.float32
    np.testing.assert_allclose(thin[::ratio], thick, rtol=0, atol=1e-3)


@pytest.mark.parametrize("slices", [2, 3, 7, 40])
@pytest.mark.parametrize("ratio", [3, 5])
@pytest.mark.parametrize(("method", "order"), [("nearest", 0), ("linear", 1), ("cubic", 3)])
def test_splines_equal_zooming_the_whole_volume_with_scipy(slices, ratio, method, order):
    thick = np.random.default_rng(slices).normal(size=(slices, 6, 5))
    thin = (slices - 1) * ratio + 1
    zoomed = ndimage.zoom(thick, (thin / slices, 1, 1), order=order, mode="mirror", grid_mode=False)
    np.testing.assert_allclose(interpolate_slices(thick, ratio, method), zoomed, rtol=0, atol=1e-5)


def test_linear_is_exact_on_a_ramp():
    thick = _along_slices(10.0 * np.arange(6))
    thin = interpolate_slices(thick, 5, "linear")
    np.testing.assert_allclose(thin, _along_slices(10.0 * np.arange(26) / 5), atol=1e-5)


def test_nearest_repeats_the_closest_thick_slice():
    weights = slice_weights(3, 5, "nearest")
    expected_source = [0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(weights, np.eye(3)[expected_source])


def test_cubic_reproduces_a_cubic_polynomial_away_from_the_ends():
    def cubic(z):
        return 0.01 * z**3 - 0.2 * z**2 + z + 3.0

    thick = _along_slices(cubic(np.arange(30.0)))
    thin = interpolate_slices(thick, 5, "cubic")
    expected = _along_slices(cubic(np.arange(146) / 5))
    np.testing.assert_allclose(thin[40:-40], expected[40:-40], rtol=1e-5)
    linear = interpolate_slices(thick, 5, "linear")
    assert np.abs(linear[40:-40] - expected[40:-40]).max() > 0.01  # linear cannot follow the curve


def test_lanczos_weights_are_the_windowed_sinc_away_from_the_ends():
    weights = slice_weights(12, 5, "lanczos")
    j = 27  # position 5.4: taps 3..8 at distances 2.4 .. -2.6
    distance = 5.4 - np.arange(3, 9)
    kernel = np.sinc(distance) * np.sinc(distance / 3)
    np.testing.assert_allclose(weights[j, 3:9], kernel / kernel.sum(), atol=1e-12)
    assert np.count_nonzero(weights[j]) == 6


@pytest.mark.parametrize("method", METHODS)
def test_weights_sum_to_one_even_for_two_slices(method):
    weights = slice_weights(2, 5, method)
    assert weights.shape == (6, 2)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def test_lanczos_is_sharper_than_linear_on_a_step():
    thick = _along_slices(np.repeat([0.0, 100.0], 5))
    lanczos, linear = (interpolate_slices(thick, 5, m)[:, 0, 0] for m in ("lanczos", "linear"))
    edge = slice(20, 25)  # between thick slices 4 (0) and 5 (100)
    assert np.abs(np.diff(lanczos[edge])).max() > np.abs(np.diff(linear[edge])).max()


@pytest.mark.parametrize(
    ("thick", "ratio", "method", "fragment"),
    [
        (np.zeros((5, 4)), 5, "linear", r"\(K, J, I\)"),
        (np.zeros((1, 4, 4)), 5, "linear", "at least 2 slices"),
        (np.zeros((3, 4, 4)), 0, "linear", "positive integer"),
        (np.zeros((3, 4, 4)), 2.5, "cubic", "positive integer"),
        (np.zeros((3, 4, 4)), 5, "quadratic", "choose one of nearest, linear, cubic, lanczos"),
    ],
)
def test_bad_arguments_are_refused(thick, ratio, method, fragment):
    with pytest.raises(ValueError, match=fragment):
        interpolate_slices(thick, ratio, method)

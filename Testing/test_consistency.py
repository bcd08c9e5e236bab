"""Consistency of a thin prediction with the measured thick slices: figures equal hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from VolumetricSRLib.inference.consistency import (
    check_consistency,
    enforce_consistency,
    rethicken,
    slab_profile,
)
from VolumetricSRLib.inference.interpolation import interpolate_slices
from VolumetricSRLib.phantom import chest_phantom, simulate_thick, truth_slices

WINDOW = (-1024.0, 2048.0)


def test_figures_equal_a_hand_computation_on_a_small_volume():
    # ratio 3, 4 thick -> 10 thin slices; compared slabs: thick 1 (thin 2, 3, 4), thick 2 (thin 5, 6, 7)
    thin = np.zeros((10, 1, 2))
    thin[2:5, 0, 0] = [10.0, 20.0, 30.0]  # mean 20
    thin[5:8, 0, 0] = [0.0, 0.0, 90.0]  # mean 30
    thin[2:8, 0, 1] = 100.0
    thick = np.zeros((4, 1, 2))
    thick[1, 0] = [26.0, 100.0]  # |20 - 26| = 6, |100 - 100| = 0
    thick[2, 0] = [30.0, 90.0]  # |30 - 30| = 0, |100 - 90| = 10
    result = check_consistency(thin, thick, 3, WINDOW)
    assert result.per_slab_hu == pytest.approx((3.0, 5.0))
    assert result.mean_abs_hu == pytest.approx(4.0)
    assert (result.worst_slab, result.worst_abs_hu) == (2, pytest.approx(5.0))
    assert result.summary() == {
        "mean_abs_hu": 4.0, "worst_slab": 2, "worst_abs_hu": 5.0, "slabs_compared": 2, "slab_profile": "box",
    }  # fmt: skip
    assert "4.0 HU over 2 slabs, worst slab 2 (5.0 HU)" in result.line()


def test_the_gaussian_profile_weights_the_slab_centre():
    thin = np.zeros((11, 1, 1))
    thin[4:7, 0, 0] = [0.0, 10.0, 0.0]
    expected = 10.0 * slab_profile(5, "gaussian")[2]
    np.testing.assert_allclose(rethicken(thin, 5, "gaussian")[:, 0, 0], [expected])


def test_the_truth_of_a_simulated_scan_is_consistent_and_interpolation_is_not():
    thin, affine = chest_phantom((41, 40, 48), pixel_mm=3.0)
    thick, _ = simulate_thick(thin.astype(np.float32), affine, 5)
    truth = thin[truth_slices(thick.shape[0], 5)].astype(np.float32)
    assert check_consistency(truth, thick, 5, WINDOW).mean_abs_hu < 1e-3
    cubic = interpolate_slices(thick, 5, "cubic")
    assert check_consistency(cubic, thick, 5, WINDOW).mean_abs_hu > 1.0


def test_enforcing_makes_every_full_slab_match_and_brings_the_prediction_closer_to_the_truth():
    thin, affine = chest_phantom((41, 40, 48), pixel_mm=3.0, seed=2)
    thick, _ = simulate_thick(thin.astype(np.float32), affine, 5)
    truth = thin[truth_slices(thick.shape[0], 5)].astype(np.float64)
    linear = interpolate_slices(thick, 5, "linear")
    corrected = enforce_consistency(linear, thick, 5, WINDOW)
    assert corrected.dtype == np.float32 and corrected.shape == linear.shape
    assert check_consistency(corrected, thick, 5, WINDOW).mean_abs_hu < 1e-3
    np.testing.assert_array_equal(corrected[:3], linear[:3])  # half slabs at the ends stay as they were
    assert np.mean((corrected - truth) ** 2) < np.mean((linear - truth) ** 2)


def test_values_are_compared_inside_the_window():
    thin = np.full((11, 1, 1), 3000.0)
    thick = np.full((3, 1, 1), 2500.0)
    assert check_consistency(thin, thick, 5, WINDOW).mean_abs_hu == 0.0  # both clip to 2048


@pytest.mark.parametrize(
    ("thin_shape", "thick_shape", "ratio", "fragment"),
    [
        ((10, 2, 2), (3, 2, 2), 5, r"not the x5 grid .*expected \(11, 2, 2\)"),
        ((6, 2, 2), (2, 2, 2), 5, "no full slab"),
        ((11, 2, 2), (3, 2, 3), 5, "not the x5 grid"),
        ((9, 2, 2), (3, 2, 2), 4, "ratio 4 is even"),
        ((11, 2), (3, 2), 5, r"\(K, J, I\)"),
    ],
)
def test_bad_grids_are_refused(thin_shape, thick_shape, ratio, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_consistency(np.zeros(thin_shape), np.zeros(thick_shape), ratio, WINDOW)


def test_an_unknown_slab_profile_is_refused():
    with pytest.raises(ValueError, match="unknown slab profile 'tent': use one of box, gaussian"):
        check_consistency(np.zeros((11, 2, 2)), np.zeros((3, 2, 2)), 5, WINDOW, slab="tent")

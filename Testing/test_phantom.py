"""The synthetic chest phantom and the simulated thick scan: determinism, anatomy, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from VolumetricSRLib.geometry import thin_grid
from VolumetricSRLib.phantom import (
    DEFAULT_SHAPE,
    TISSUE_HU,
    chest_phantom,
    review_point,
    simulate_thick,
    truth_slices,
)

SMALL = (31, 64, 64)


@pytest.fixture(scope="module")
def default_phantom():
    return chest_phantom()


def _hu_at(volume: np.ndarray, affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    """The voxel nearest to a world point."""
    i, j, k = np.rint(np.linalg.solve(affine, np.append(world, 1.0))[:3]).astype(int)
    return volume[k, j, i]


def test_default_phantom_grid(default_phantom):
    hu, affine = default_phantom
    assert hu.shape == DEFAULT_SHAPE
    assert hu.dtype == np.int16
    np.testing.assert_allclose(np.diag(affine), [-1.5, -1.5, 1.0, 1.0])
    centre = affine @ np.array([(224 - 1) / 2, (224 - 1) / 2, 0, 1])
    np.testing.assert_allclose(centre[:2], 0.0)  # in-plane centre at the origin
    assert hu.min() >= -1024


def test_same_seed_same_phantom_other_seed_other_phantom():
    a, affine_a = chest_phantom(SMALL, seed=3)
    b, affine_b = chest_phantom(SMALL, seed=3)
    c, _ = chest_phantom(SMALL, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(affine_a, affine_b)
    assert np.abs(a.astype(int) - c).mean() > 5  # other noise, vessels and nodules


@pytest.mark.parametrize(
    ("tissue", "low", "high", "least_fraction"),
    [
        ("air", -1100, -950, 0.15),
        ("lung", -900, -800, 0.05),
        ("fat", -150, -50, 0.02),
        ("soft_tissue", 0, 80, 0.10),
        ("bone", 500, 1100, 0.003),
    ],
)
def test_tissue_classes_are_present(default_phantom, tissue, low, high, least_fraction):
    hu, _ = default_phantom
    assert np.mean((hu >= low) & (hu <= high)) > least_fraction, tissue


def test_anatomy_sits_where_described(default_phantom):
    hu, affine = default_phantom
    mid = 50.0
    lung = [
        _hu_at(hu, affine, np.array([95.0 + dx, 30.0 + dy, mid]))
        for dx in range(-15, 16, 3)
        for dy in range(-15, 16, 3)
    ]
    assert np.median(lung) == pytest.approx(TISSUE_HU["lung"], abs=80)
    assert abs(_hu_at(hu, affine, np.array([160.0, 160.0, mid])) - TISSUE_HU["air"]) < 100
    assert _hu_at(hu, affine, np.array([0.0, -55.0 + 15.5, mid])) > 500  # vertebral cortex
    point = review_point(affine, hu.shape)
    around = [
        _hu_at(hu, affine, point + np.array([dx, dy, 0.0]))
        for dx in range(-9, 10, 3)
        for dy in range(-9, 10, 3)
    ]
    assert np.median(around) < -600  # the montage looks through the right lung


def test_noise_level_in_air(default_phantom):
    hu, _ = default_phantom
    corner = hu[:, :10, :10].astype(np.float64)
    assert 12 < corner[corner > -1024].std() < 25


def test_simulated_thick_slice_is_the_mean_of_the_thin_slices_around_it():
    rng = np.random.default_rng(5)
    thin = rng.normal(0, 200, (23, 6, 7)).astype(np.float32)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    thin_affine = np.eye(4)
    thin_affine[:3, :3] = rotation @ np.diag([0.7, 0.8, 1.0])
    thin_affine[:3, 3] = [12.0, -30.0, 55.0]
    thick, thick_affine = simulate_thick(thin, thin_affine, 5)
    assert thick.shape == (4, 6, 7)  # 23 // 5: the last 3 thin slices fill no slab
    np.testing.assert_allclose(thick_affine[:3, :2], thin_affine[:3, :2])
    np.testing.assert_allclose(np.linalg.norm(thick_affine[:3, 2]), 5.0)
    for k in range(4):
        world = thick_affine @ np.array([0.0, 0.0, k, 1.0])
        i, j, thin_k = np.linalg.solve(thin_affine, world)[:3]
        assert (i, j) == (pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9))
        assert thin_k == pytest.approx(5 * k + 2, abs=1e-9)
        centre = round(thin_k)
        np.testing.assert_allclose(thick[k], thin[centre - 2 : centre + 3].mean(axis=0), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("ratio", [1, 3, 5, 7])
def test_truth_slices_lie_on_the_thin_grid_of_the_thick_scan(ratio):
    thin_affine = np.array([[-0.8, 0, 0.1, 10], [0, -0.8, 0, 20], [0, 0.05, 1.2, -40], [0, 0, 0, 1.0]])
    thin = np.zeros((40, 3, 3), dtype=np.int16)
    thick, thick_affine = simulate_thick(thin, thin_affine, ratio)
    grid = thin_grid(thick_affine, thick.shape[0], ratio)
    picked = truth_slices(thick.shape[0], ratio)
    assert picked.stop - picked.start == grid.slices
    assert picked.stop <= thin.shape[0]
    for j in range(grid.slices):
        world = grid.affine @ np.array([1.0, 2.0, j, 1.0])
        source = thin_affine @ np.array([1.0, 2.0, picked.start + j, 1.0])
        np.testing.assert_allclose(world, source, atol=1e-9)


def test_ratio_one_keeps_the_volume():
    thin = np.arange(2 * 2 * 3, dtype=np.int16).reshape(2, 2, 3)
    thick, affine = simulate_thick(thin, np.eye(4), 1)
    np.testing.assert_array_equal(thick, thin)
    np.testing.assert_array_equal(affine, np.eye(4))


@pytest.mark.parametrize(
    ("thin", "ratio", "fragment"),
    [
        (np.zeros((20, 4, 4)), 4, "even"),
        (np.zeros((20, 4, 4)), 0, "positive integer"),
        (np.zeros((9, 4, 4)), 5, "at least 10"),
        (np.zeros((20, 4)), 5, r"\(K, J, I\)"),
    ],
)
def test_bad_simulation_requests_are_refused(thin, ratio, fragment):
    with pytest.raises(ValueError, match=fragment):
        simulate_thick(thin, np.eye(4), ratio)


def test_even_ratio_truth_is_refused():
    with pytest.raises(ValueError, match="odd"):
        truth_slices(5, 2)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"shape": (1, 64, 64)}, "at least 2"),
        ({"shape": (8, 64)}, r"\(K, J, I\)"),
        ({"slice_mm": 0}, "positive"),
    ],
)
def test_bad_phantom_requests_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        chest_phantom(**kwargs)

"""The geometry rule: thin slice r*k lies at the world position of thick slice k, for any orientation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from VolumetricSRLib.geometry import (
    GeometryError,
    SpacingWarning,
    check_slice_spacing,
    slice_axis_first,
    slice_spacing,
    spaced_grid,
    thick_axis,
    thin_grid,
    validate_affine,
    voxel_spacing,
)

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


@st.composite
def affines(draw) -> np.ndarray:
    """Voxel-to-world matrices: random rotation, random axis flips, optional RAS->LPS, spacing, origin."""
    seed = draw(hnp.arrays(np.float64, (3, 3), elements=st.floats(-1, 1, allow_subnormal=False)))
    # Q of a QR factorisation is orthonormal whatever the seed; a degenerate seed still gives one
    rotation, _ = np.linalg.qr(seed + np.eye(3) * 1e-3)
    flips = np.diag(draw(st.lists(st.sampled_from((-1.0, 1.0)), min_size=3, max_size=3)))
    direction = rotation @ flips
    if draw(st.booleans()):
        direction = LPS_FROM_RAS @ direction
    spacing = draw(st.lists(st.floats(0.1, 10.0), min_size=3, max_size=3))
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing)
    affine[:3, 3] = draw(st.lists(st.floats(-500, 500), min_size=3, max_size=3))
    return affine


def world(affine: np.ndarray, i, j, k) -> np.ndarray:
    return (affine @ np.stack(np.broadcast_arrays(i, j, k, 1.0)).astype(np.float64))[:3]


@settings(max_examples=200, deadline=None)
@given(
    affine=affines(),
    slices=st.integers(1, 80),
    ratio=st.integers(1, 8),
    i=st.floats(0, 511),
    j=st.floats(0, 511),
)
def test_thin_slice_r_k_lies_on_thick_slice_k(affine, slices, ratio, i, j):
    grid = thin_grid(affine, slices, ratio)
    k = np.arange(slices, dtype=np.float64)
    np.testing.assert_allclose(world(grid.affine, i, j, ratio * k), world(affine, i, j, k), rtol=0, atol=1e-9)
    assert grid.slices == (slices - 1) * ratio + 1
    np.testing.assert_array_equal(grid.affine[:, [0, 1, 3]], affine[:, [0, 1, 3]])
    np.testing.assert_allclose(voxel_spacing(grid.affine)[2], voxel_spacing(affine)[2] / ratio, rtol=1e-12)
    assert np.sign(np.linalg.det(grid.affine[:3, :3])) == np.sign(np.linalg.det(affine[:3, :3]))


@settings(max_examples=100, deadline=None)
@given(affine=affines(), slices=st.integers(2, 40), ratio=st.integers(2, 6))
def test_thin_slices_between_thick_slices_lie_on_the_line_between_them(affine, slices, ratio):
    grid = thin_grid(affine, slices, ratio)
    z = np.arange(grid.slices)
    k, step = np.divmod(z, ratio)
    t = step / ratio
    k_next = np.minimum(k + 1, slices - 1)
    between = (1 - t) * world(affine, 3.0, 4.0, k) + t * world(affine, 3.0, 4.0, k_next)
    np.testing.assert_allclose(world(grid.affine, 3.0, 4.0, z), between, rtol=0, atol=1e-9)


def test_thin_grid_of_a_plain_axial_5mm_scan():
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    affine[:3, 3] = (-180.0, -200.0, -300.0)
    grid = thin_grid(affine, 40, 5)
    assert grid.slices == 196
    expected = affine.copy()
    expected[2, 2] = 1.0
    np.testing.assert_array_equal(grid.affine, expected)


@pytest.mark.parametrize(
    ("affine", "fragment"),
    [
        (np.diag([0.7, 0.7, 0.0, 1.0]), "slice spacing is missing or zero"),
        (np.diag([0.0, 0.7, 5.0, 1.0]), "in-plane spacing is missing or zero"),
        (np.full((4, 4), np.nan), "no valid 4 x 4"),
        (np.where(np.eye(4) > 0, np.inf, 0.0), "no valid 4 x 4"),
        (np.eye(3), "no valid 4 x 4"),
        (np.array([[1.0, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]), "degenerate"),
    ],
)
def test_unusable_affines_are_refused(affine, fragment):
    with pytest.raises(GeometryError, match=fragment):
        validate_affine(affine)
    with pytest.raises(GeometryError, match=fragment):
        thin_grid(affine, 10, 5)


@pytest.mark.parametrize("ratio", [0, -5, 2.5, True])
def test_bad_ratios_are_refused(ratio):
    with pytest.raises(GeometryError, match="ratio must be a positive integer"):
        thin_grid(np.eye(4), 10, ratio)


@pytest.mark.parametrize("spacing", [5.0, 3.0, 10.0, 2.5])
def test_spacing_near_the_trained_one_passes_silently(spacing):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_slice_spacing(spacing, 5.0, 5)


@pytest.mark.parametrize("spacing", [1.25, 2.0, 10.5, 20.0])
def test_spacing_far_from_the_trained_one_warns(spacing):
    with pytest.warns(SpacingWarning, match="trained on 5 mm slices"):
        check_slice_spacing(spacing, 5.0, 5)


@pytest.mark.parametrize("spacing", [1.0, 0.5, 0.1])
def test_spacing_already_thin_is_refused(spacing):
    with pytest.raises(GeometryError, match="already as thin as this model's output"):
        check_slice_spacing(spacing, 5.0, 5)


@pytest.mark.parametrize("spacing", [0.0, -5.0, float("nan"), float("inf")])
def test_meaningless_spacing_is_refused(spacing):
    with pytest.raises(GeometryError, match="makes no sense"):
        check_slice_spacing(spacing, 5.0, 5)


def test_no_trained_spacing_means_no_spacing_check():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_slice_spacing(0.3, None, 5)


# ---------------------------------------------------------------- output spacing and the slice axis


@settings(max_examples=200, deadline=None)
@given(
    affine=affines(),
    slices=st.integers(2, 80),
    spacing=st.floats(0.2, 6.0),
    i=st.floats(0, 511),
    j=st.floats(0, 511),
)
def test_spaced_slice_n_lies_at_input_slice_n_times_spacing_over_input_spacing(affine, slices, spacing, i, j):
    grid = spaced_grid(affine, slices, spacing)
    input_mm = voxel_spacing(affine)[2]
    n = np.arange(grid.slices, dtype=np.float64)
    expected = world(affine, i, j, n * spacing / input_mm)
    np.testing.assert_allclose(world(grid.affine, i, j, n), expected, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(grid.affine[:, [0, 1, 3]], affine[:, [0, 1, 3]])  # origin, in-plane
    np.testing.assert_allclose(voxel_spacing(grid.affine)[2], spacing, rtol=1e-12)
    length = (slices - 1) * input_mm
    assert (grid.slices - 1) * spacing <= length * (1 + 1e-6)  # the last not beyond the last input slice
    assert grid.slices * spacing > length  # and no room for one more


@pytest.mark.parametrize(
    ("input_mm", "slices", "expected"), [(2.5, 9, 21), (3.0, 9, 25), (5.0, 9, 41), (2.4, 6, 13)]
)
def test_spaced_grid_counts_1_mm_slices(input_mm, slices, expected):
    affine = np.diag([0.8, 0.8, input_mm, 1.0])
    assert spaced_grid(affine, slices, 1.0).slices == expected


def test_the_thick_axis_is_the_clearly_coarsest_array_axis():
    assert thick_axis(np.diag([0.8, 0.8, 5.0, 1.0])) == 0  # affine column k is array axis 0
    assert thick_axis(np.diag([0.8, 5.0, 0.8, 1.0])) == 1
    assert thick_axis(np.diag([3.0, 0.7, 0.7, 1.0])) == 2
    assert thick_axis(np.diag([0.8, 0.8, 1.0, 1.0])) == 0  # 1.25 times: clear enough
    for spacing, sizes in [((1.5, 1.5, 1.5), "1.5 x 1.5 x 1.5"), ((0.7, 5.0, 5.0), "0.7 x 5 x 5")]:
        with pytest.raises(GeometryError, match=f"no clear slice axis: its voxels are {sizes} mm"):
            thick_axis(np.diag([*spacing, 1.0]))
    with pytest.raises(GeometryError, match="spacing is missing or zero"):
        thick_axis(np.diag([0.8, 0.8, 0.0, 1.0]))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_axis_first_keeps_every_voxel_at_its_world_position_and_is_its_own_inverse(axis):
    rng = np.random.default_rng(axis)
    array = rng.normal(size=(3, 4, 5))
    affine = np.eye(4)
    affine[:3, :3] = rng.normal(size=(3, 3))
    affine[:3, 3] = rng.normal(size=3)
    moved, moved_affine = slice_axis_first(array, affine, axis)
    for index in np.ndindex(array.shape):
        new = list(index)
        new[0], new[axis] = index[axis], index[0]
        assert moved[tuple(new)] == array[index]
        np.testing.assert_allclose(
            world(moved_affine, *new[::-1]), world(affine, *index[::-1]), rtol=0, atol=1e-12
        )
    back, back_affine = slice_axis_first(moved, moved_affine, axis)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(back_affine, affine)


@pytest.mark.parametrize(
    ("spacing", "expected"), [((0.7, 0.8, 5.0), 5.0), ((0.7, 3.0, 0.8), 3.0), ((2.5, 0.6, 0.6), 2.5)]
)
def test_slice_spacing_is_the_spacing_along_the_thick_axis_wherever_it_lies(spacing, expected) -> None:
    assert slice_spacing(np.diag([*spacing, 1.0])) == expected
    with pytest.raises(GeometryError, match="no clear slice axis"):
        slice_spacing(np.diag([1.0, 1.0, 1.0, 1.0]))

"""Pseudo pairs: simulated thick slices sit where their thin slab sits in world space."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import phantom_ct, training_ct
from volumetricsr_training.data import PseudoPairSampler, ThinVolume, downsample_inplane
from volumetricsr_training.pseudo_pairs import make_pseudo_pair, simulate_thick_slices, slab_profile
from VolumetricSRLib.geometry import voxel_spacing
from VolumetricSRLib.intensity import hu_to_unit
from VolumetricSRLib.io.volume_io import read_volume
from VolumetricSRLib.phantom import simulate_thick

RATIO = 5


def oblique_affine(slice_mm: float = 1.25, pixel_mm: float = 0.7) -> np.ndarray:
    """A rotated, flipped-slice-axis affine: index arithmetic alone would not find the world positions."""
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([pixel_mm, -pixel_mm, -slice_mm])
    affine[:3, 3] = [12.5, -40.0, 300.0]
    return affine


def world_of_slice(affine: np.ndarray, k: float) -> np.ndarray:
    return affine[:3, :3] @ np.array([3.0, 2.0, k]) + affine[:3, 3]


def thin_index_at(affine: np.ndarray, world: np.ndarray) -> float:
    return float(np.linalg.solve(affine[:3, :3], world - affine[:3, 3])[2])


def test_each_thick_slice_is_the_mean_of_the_thin_slices_around_its_world_position():
    rng = np.random.default_rng(3)
    thin = rng.normal(0.0, 300.0, (37, 6, 5)).astype(np.float32)  # 7 whole slabs, 2 spare slices
    thin_affine = oblique_affine()
    pair = make_pseudo_pair(thin, thin_affine, RATIO)
    assert pair.thick.shape == (7, 6, 5)
    assert np.allclose(voxel_spacing(pair.thick_affine), voxel_spacing(thin_affine) * [1, 1, RATIO])
    for k in range(pair.thick.shape[0]):
        centre = thin_index_at(thin_affine, world_of_slice(pair.thick_affine, k))
        assert centre == pytest.approx(round(centre), abs=1e-9)
        m = round(centre)
        assert np.allclose(pair.thick[k], thin[m - 2 : m + 3].mean(axis=0), atol=1e-3)
        # the thin truth slice r k lies on thick slice k, and the truth grid is the thin grid
        assert np.array_equal(pair.truth[RATIO * k], thin[m])
        assert np.allclose(world_of_slice(pair.truth_affine, RATIO * k), world_of_slice(thin_affine, m))
    assert pair.truth.shape[0] == (7 - 1) * RATIO + 1


@pytest.mark.parametrize("ct", ["phantom", "real"])
def test_pseudo_pair_of_a_ct_matches_the_core_simulation(ct):
    volume = read_volume(training_ct(ct))
    thin = volume.array.astype(np.float32)
    pair = make_pseudo_pair(thin, volume.affine, RATIO)
    core_thick, core_affine = simulate_thick(thin, volume.affine, RATIO)
    assert np.array_equal(pair.thick, core_thick)
    assert np.array_equal(pair.thick_affine, core_affine)
    # thick slice 1 is the mean of thin slices 5..9 and lies 7 slices (21 mm) above the first thin one
    assert np.allclose(pair.thick[1], thin[5:10].mean(axis=0), atol=1e-3)
    assert world_of_slice(pair.thick_affine, 1)[2] == pytest.approx(volume.affine[2, 3] + 7 * 3.0)


def test_gaussian_slab_weights_the_centre_most():
    weights = slab_profile(RATIO, "gaussian")
    assert weights.sum() == pytest.approx(1.0)
    assert np.allclose(weights, weights[::-1])
    assert weights[2] > weights[1] > weights[0] > 0
    thin = np.random.default_rng(1).random((10, 3, 3)).astype(np.float32)
    thick = simulate_thick_slices(thin, RATIO, "gaussian")
    expected = np.tensordot(weights, thin[5:10], axes=(0, 0))
    assert np.allclose(thick[1], expected, atol=1e-6)


def test_sparse_sampling_keeps_the_central_thin_slice_of_each_slab():
    thin = np.random.default_rng(2).random((10, 3, 3)).astype(np.float32)
    thick = simulate_thick_slices(thin, RATIO, "sparse")
    np.testing.assert_array_equal(thick, thin[[2, 7]])
    pair = make_pseudo_pair(thin, np.eye(4), RATIO, "sparse")
    np.testing.assert_array_equal(pair.thick, pair.truth[::RATIO])  # each thick slice is its Match slice


def test_evaluation_cases_carry_reproducible_noise_only_when_asked():
    from volumetricsr_training.evaluate import pseudo_cases

    path = phantom_ct()
    clean, noisy, again = (next(pseudo_cases([path], RATIO, "box", noise)) for noise in (0.0, 20.0, 20.0))
    np.testing.assert_array_equal(noisy.thick, again.thick)
    assert np.std(noisy.thick - clean.thick) == pytest.approx(20.0, rel=0.05)
    np.testing.assert_array_equal(noisy.truth, clean.truth)
    assert "noise 20 HU" in noisy.source and "noise" not in clean.source


def test_bad_slab_or_ratio_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="unknown slab profile 'tent'"):
        slab_profile(RATIO, "tent")
    with pytest.raises(ValueError, match="even"):
        make_pseudo_pair(np.zeros((20, 4, 4), np.float32), np.eye(4), 4)
    with pytest.raises(ValueError, match="fewer than 2 thick slices"):
        make_pseudo_pair(np.zeros((7, 4, 4), np.float32), np.eye(4), RATIO)


def ramp_volume(slices: int = 40, rows: int = 24, cols: int = 24) -> np.ndarray:
    """Values linear in slice, row and column (unit scale): a slab mean equals its centre slice."""
    k, j, i = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(cols), indexing="ij")
    return (0.2 + 0.01 * k + 0.003 * j + 0.001 * i).astype(np.float32)


def test_sampler_crops_put_each_thick_slice_on_its_thin_target_slice():
    volume = [ThinVolume("ramp", ramp_volume(), 1)]
    sampler = PseudoPairSampler([volume], [], RATIO, (4, 8, 8), min_body_fraction=0.0)
    thick, thin = sampler.batch(seed=0, rank=0, step=0, size=16)
    assert thick.shape == (16, 4, 8, 8) and thin.shape == (16, 16, 8, 8)
    assert thick.dtype == thin.dtype == np.float32
    assert np.allclose(thick, thin[:, ::RATIO], atol=1e-6)
    # flips happened (columns decrease in some crops) and are applied to both crops alike
    slopes = np.sign(thin[:, 0, 0, 1] - thin[:, 0, 0, 0])
    assert set(slopes) == {-1.0, 1.0}


def test_sampler_batches_depend_only_on_seed_rank_and_step():
    unit = hu_to_unit(read_volume(phantom_ct()).array)
    sampler = PseudoPairSampler([[ThinVolume("ct", unit, 1)]], [], RATIO, (4, 16, 16), noise_hu=10.0)
    first = sampler.batch(7, 0, 12, 2)
    again = sampler.batch(7, 0, 12, 2)
    other_rank = sampler.batch(7, 1, 12, 2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other_rank[1])


def test_sampler_refuses_a_volume_smaller_than_a_crop():
    volume = [ThinVolume("small", ramp_volume(slices=12), 1)]
    with pytest.raises(ValueError, match="smaller than one crop"):
        PseudoPairSampler([volume], [], RATIO, (4, 8, 8))


def test_sampler_checks_every_in_plane_scale_whatever_their_order():
    full = ramp_volume(slices=30)
    half = downsample_inplane(full, 2)
    volume = [ThinVolume("ct", half, 2), ThinVolume("ct", full, 1)]  # smallest copy listed first
    crop = (4, half.shape[1] + 1, half.shape[2] + 1)
    with pytest.raises(ValueError, match=r"ct \(in-plane scale 1/2\).*smaller than one crop"):
        PseudoPairSampler([volume], [], RATIO, crop)


def axis_coded_volume(shape: tuple[int, int, int] = (40, 36, 32)) -> ThinVolume:
    """Values a k + b j + c i (a, b, c distinct, all in [0, 1]): a step along any crop axis says which
    axis of the volume it ran along."""
    k, j, i = np.indices(shape)
    return ThinVolume("coded", (0.1 + 1e-2 * k + 1e-4 * j + 1e-6 * i).astype(np.float64), 1)


def test_inplane_views_put_each_inplane_axis_first() -> None:
    from volumetricsr_training.data import inplane_views

    volume = axis_coded_volume()
    rows, columns = inplane_views(volume)
    assert rows.unit.shape == (36, 40, 32) and columns.unit.shape == (32, 40, 36)
    np.testing.assert_array_equal(rows.unit[5, 7, 9], volume.unit[7, 5, 9])
    np.testing.assert_array_equal(columns.unit[9, 7, 5], volume.unit[7, 5, 9])
    assert rows.unit.flags.c_contiguous and "rows as slices" in rows.name


@pytest.mark.parametrize(("share", "slice_steps"), [(0.0, {1e-2}), (1.0, {1e-4, 1e-6})])
def test_inplane_pairs_take_their_slices_along_an_inplane_axis(share: float, slice_steps: set) -> None:
    sampler = PseudoPairSampler(
        [[axis_coded_volume()]], [], RATIO, (4, 8, 8), min_body_fraction=0.0, flip=False, inplane_pairs=share
    )
    thick, thin = sampler.batch(seed=4, rank=0, step=0, size=40)
    steps = {float(np.round(step, 9)) for step in np.diff(thin[:, :, 0, 0], axis=1).ravel()}
    assert steps == slice_steps  # the thin slices of every pair run along the axes expected
    np.testing.assert_allclose(thick[:, 1], thin[:, 3:8].mean(axis=1), atol=1e-6)  # the slab mean
    again, _ = sampler.batch(seed=4, rank=0, step=0, size=40)
    np.testing.assert_array_equal(again, thick)  # (seed, rank, step) still decide the batch


def test_a_share_of_inplane_pairs_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"inplane_pairs is a share between 0 and 1, got 1\.5"):
        PseudoPairSampler([[axis_coded_volume()]], [], RATIO, (4, 8, 8), inplane_pairs=1.5)


@pytest.mark.parametrize("kind", ["box", "gaussian", "trapezoid"])
@pytest.mark.parametrize("width", [4.0, 5.0, 6.0])
def test_slab_profiles_sum_to_one_symmetric_about_the_slab(kind: str, width: float) -> None:
    from volumetricsr_training.pseudo_pairs import slab_weights

    weights, margin = slab_weights(RATIO, kind, width)
    assert len(weights) == RATIO + 2 * margin and weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, weights[::-1], atol=1e-12)
    assert weights[len(weights) // 2] == weights.max()  # the slab centre weighs most


def test_a_box_as_wide_as_the_ratio_is_the_plain_slab_mean_and_a_wider_one_reaches_its_neighbours() -> None:
    from volumetricsr_training.pseudo_pairs import slab_weights

    weights, margin = slab_weights(RATIO, "box", 5.0)
    np.testing.assert_allclose(weights[margin : margin + RATIO], np.full(RATIO, 0.2))
    assert weights[:margin].sum() == weights[margin + RATIO :].sum() == 0
    wide, margin = slab_weights(RATIO, "box", 6.0)  # half of each neighbouring slice falls inside
    np.testing.assert_allclose(wide[margin - 1 : margin + RATIO + 1], [1 / 12] + [1 / 6] * 5 + [1 / 12])


@pytest.mark.parametrize("kinds", [("box",), ("gaussian",), ("trapezoid",), ("box", "gaussian", "trapezoid")])
def test_augmented_thick_slices_stay_on_their_thin_slices(kinds: tuple[str, ...]) -> None:
    """On a volume linear along the slice axis every symmetric slab gives the value at its centre: each
    thick slice equals the thin slice it lies on, whatever profile and width were drawn; on a curved
    one the slabs blur, by how much depending on the profile."""
    from volumetricsr_training.pseudo_pairs import SlabAugmentation

    k = np.arange(60, dtype=np.float64)[:, None, None]
    augment = SlabAugmentation(kinds, (0.8, 1.2))
    for values, exact in ((0.1 + 1e-2 * k, True), (0.1 + 2e-4 * k**2, False)):
        volume = ThinVolume("ramp", np.broadcast_to(values, (60, 12, 12)).copy(), 1)
        sampler = PseudoPairSampler([[volume]], [], RATIO, (4, 8, 8), min_body_fraction=0.0, augment=augment)
        thick, thin = sampler.batch(seed=2, rank=0, step=0, size=30)
        on_thin = thin[:, ::RATIO]
        if exact:
            np.testing.assert_allclose(thick, on_thin, atol=1e-6)
        else:
            assert (thick > on_thin + 1e-6).all()  # a convex profile along k: every slab mean lies above


def test_slab_augmentation_settings_are_checked_in_the_config() -> None:
    from volumetricsr_training.config import TrainConfig

    assert TrainConfig(slab_mix=["box", "gaussian"], slab_width=[0.8, 1.2]).augmentation().widths == (
        0.8,
        1.2,
    )
    assert TrainConfig().augmentation() is None
    with pytest.raises(ValueError, match="unknown slab profile 'sinc'"):
        TrainConfig(slab_mix=["sinc"])
    with pytest.raises(ValueError, match=r"widths 0\.5 <= low <= high <= 2"):
        TrainConfig(slab_mix=["box"], slab_width=[1.2, 0.8])

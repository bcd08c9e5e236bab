"""PSNR and SSIM of the paper's protocol, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from VolumetricSRLib.metrics import (
    K1,
    K2,
    gaussian_window,
    protocol_slices,
    psnr,
    score_volume,
    ssim_2d,
    ssim_axial,
    ssim_map,
)


def test_psnr_of_a_known_mse():
    truth = np.zeros((4, 4))
    pred = truth.copy()
    pred[:2] = 0.2  # half the pixels off by 0.2: MSE 0.02
    assert psnr(pred, truth) == pytest.approx(-10 * math.log10(0.02), abs=1e-12)
    assert psnr(np.full((3, 5), 0.6), np.full((3, 5), 0.5)) == pytest.approx(20.0, abs=1e-12)


def test_psnr_of_identical_arrays_is_infinite():
    a = np.random.default_rng(0).random((3, 8, 8))
    assert psnr(a, a.copy()) == math.inf


def test_gaussian_window_is_the_papers():
    window = gaussian_window()
    assert window.shape == (11,)
    assert window.sum() == pytest.approx(1.0)
    assert window[5] / window[6] == pytest.approx(math.exp(1 / (2 * 1.5**2)))
    assert window[0] == pytest.approx(window[10])


def test_ssim_of_identical_images_is_one():
    a = np.random.default_rng(1).random((20, 17))
    assert ssim_2d(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_a_constant_shift_matches_the_formula():
    """Constant images c and c + d, zero padding: the local weight sum W decides every pixel.

    With W the window weight inside the image, mu = c W, sigma^2 = c^2 W (1 - W), cov = c (c + d) W (1 - W).
    Away from the border W = 1 and SSIM = (2 c (c + d) + C1) / (c^2 + (c + d)^2 + C1).
    """
    c, d, n = 0.4, 0.1, 24
    a, b = np.full((n, n), c), np.full((n, n), c + d)
    c1, c2 = K1**2, K2**2
    interior = (2 * c * (c + d) + c1) / (c**2 + (c + d) ** 2 + c1)
    assert ssim_map(a, b)[5:-5, 5:-5] == pytest.approx(np.full((n - 10, n - 10), interior), abs=1e-9)

    g = gaussian_window()
    covered = np.array([sum(g[o + 5] for o in range(-5, 6) if 0 <= p + o < n) for p in range(n)])
    w = covered[:, None] * covered[None, :]
    s, m = c**2 + (c + d) ** 2, c * (c + d)
    expected = ((2 * m * w**2 + c1) * (2 * m * w * (1 - w) + c2)) / ((s * w**2 + c1) * (s * w * (1 - w) + c2))
    assert ssim_2d(a, b) == pytest.approx(expected.mean(), abs=1e-9)
    assert ssim_2d(a, b) != pytest.approx(interior, abs=1e-4)  # the zero-padded border counts


def test_ssim_equals_a_pixel_by_pixel_computation():
    rng = np.random.default_rng(2)
    a, b = rng.random((9, 12)), rng.random((9, 12))
    g = gaussian_window()
    kernel = np.outer(g, g)
    pa, pb = np.pad(a, 5), np.pad(b, 5)
    values = []
    for r in range(9):
        for q in range(12):
            wa, wb = pa[r : r + 11, q : q + 11], pb[r : r + 11, q : q + 11]
            ma, mb = (kernel * wa).sum(), (kernel * wb).sum()
            va, vb = (kernel * wa * wa).sum() - ma**2, (kernel * wb * wb).sum() - mb**2
            cov = (kernel * wa * wb).sum() - ma * mb
            values.append(
                ((2 * ma * mb + K1**2) * (2 * cov + K2**2)) / ((ma**2 + mb**2 + K1**2) * (va + vb + K2**2))
            )
    assert ssim_2d(a, b) == pytest.approx(np.mean(values), abs=1e-12)


def test_ssim_equals_a_2d_convolution_in_torch_on_ct_slices():
    """The authors' formulation, computed independently: one 11 x 11 Gaussian kernel applied by
    torch's conv2d with zero padding of 5, SSIM map averaged over every pixel; on phantom CT slices
    (truth against its linear interpolation from 5 mm slabs), not on noise only."""
    import torch
    import torch.nn.functional as F

    from VolumetricSRLib.inference.interpolation import interpolate_slices
    from VolumetricSRLib.intensity import hu_to_unit
    from VolumetricSRLib.phantom import chest_phantom, simulate_thick, truth_slices

    thin, affine = chest_phantom((31, 48, 56), pixel_mm=3.0)
    thick, _ = simulate_thick(thin.astype(np.float32), affine, 5)
    truth = hu_to_unit(thin[truth_slices(thick.shape[0], 5)]).astype(np.float64)
    pred = hu_to_unit(interpolate_slices(thick, 5, "linear")).astype(np.float64)
    sigma, size = 1.5, 11
    taps = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = torch.outer(g / g.sum(), g / g.sum())[None, None]

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, padding=size // 2)

    x, y = torch.from_numpy(pred)[:, None], torch.from_numpy(truth)[:, None]
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    maps = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    per_slice = maps.mean(dim=(1, 2, 3)).numpy()
    assert 0.5 < per_slice.min() < per_slice.max() < 0.999  # real differences to measure
    for n in range(truth.shape[0]):
        assert ssim_2d(pred[n], truth[n]) == pytest.approx(per_slice[n], abs=1e-10)
    assert ssim_axial(pred, truth) == pytest.approx(per_slice.mean(), abs=1e-10)


def test_ssim_axial_averages_the_slices():
    rng = np.random.default_rng(3)
    truth = rng.random((3, 16, 16))
    pred = truth.copy()
    pred[0] += 0.1
    pred[2] = rng.random((16, 16))
    expected = np.mean([1.0, ssim_2d(pred[0], truth[0]), ssim_2d(pred[2], truth[2])])
    assert ssim_axial(pred, truth) == pytest.approx(expected, abs=1e-12)


def test_protocol_leaves_out_five_slices_at_each_end():
    assert protocol_slices(20) == slice(5, 15)
    assert protocol_slices(11) == slice(5, 6)
    assert protocol_slices(9, trim=2) == slice(2, 7)
    with pytest.raises(ValueError, match="at least 11"):
        protocol_slices(10)


def test_score_volume_maps_hu_and_trims():
    truth = np.zeros((14, 16, 16), dtype=np.int16)
    pred = truth.astype(np.float32) + 30.72  # 0.01 on the [0, 1] scale of [-1024, 2048]
    pred[:5] = 2000.0  # left out by the protocol
    pred[-5:] = -3000.0
    score = score_volume(pred, truth)
    assert score["psnr"] == pytest.approx(40.0, abs=1e-4)
    assert score["ssim"] == pytest.approx(
        ssim_axial(np.full((4, 16, 16), 1054.72 / 3072), np.full((4, 16, 16), 1024 / 3072))
    )


def test_score_volume_clips_to_the_window():
    truth = np.full((12, 8, 8), -1024.0)
    pred = np.full((12, 8, 8), -3000.0)  # below the window: clipped to the same 0
    assert score_volume(pred, truth) == {"psnr": math.inf, "ssim": pytest.approx(1.0)}


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: psnr(np.zeros((2, 2)), np.zeros((2, 3))), "differ in shape"),
        (lambda: psnr(np.zeros(0), np.zeros(0)), "empty"),
        (lambda: ssim_2d(np.zeros((2, 2, 2)), np.zeros((2, 2, 2))), "2D"),
        (lambda: ssim_axial(np.zeros((4, 4)), np.zeros((4, 4))), r"\(K, J, I\)"),
        (lambda: score_volume(np.zeros((12, 4, 4)), np.zeros((11, 4, 4))), "same grid"),
        (lambda: score_volume(np.zeros((10, 4, 4)), np.zeros((10, 4, 4))), "none left"),
    ],
)
def test_bad_inputs_are_refused(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()


def test_detailed_scores_count_the_slices_and_tissues_they_name() -> None:
    from VolumetricSRLib.metrics import detailed_scores

    k, _, i = np.indices((31, 24, 20))
    truth = np.where(i < 10, -800.0, np.where(i < 16, 40.0, 700.0)) + 0 * k  # lung | soft tissue | bone
    pred = truth.copy()
    pred[k % 5 != 0] += 30.72  # only the slices between thick slices are off, by 0.01 on the unit scale
    pred[(k % 5 != 0) & (i >= 16)] += 30.72  # twice as far in bone
    scores = detailed_scores(pred, truth, ratio=5)
    between = np.full((21, 24, 20), 0.01)
    between[:, :, 16:] = 0.02
    assert scores["psnr_between"] == pytest.approx(-10 * np.log10(np.mean(between**2)))
    assert scores["psnr_lung"] == pytest.approx(-10 * np.log10(0.01**2 * 16 / 21))  # 16 of 21 kept slices off
    assert scores["psnr_bone"] == pytest.approx(-10 * np.log10(0.02**2 * 16 / 21))
    same = detailed_scores(truth, truth, ratio=5)
    assert same["ssim_coronal"] == pytest.approx(1.0) and same["ssim_sagittal"] == pytest.approx(1.0)
    assert np.isnan(detailed_scores(pred[:, :, :10], truth[:, :, :10], ratio=5)["psnr_bone"])  # no bone there

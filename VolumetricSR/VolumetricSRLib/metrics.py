"""The paper's image-quality metrics (RPLHR-CT protocol): PSNR and axial SSIM on the [0, 1] scale.

Protocol: HU are clipped to the intensity window and scaled to [0, 1]; the first and last 5 thin
slices are left out; PSNR uses the mean squared error of the whole (trimmed) volume with peak 1;
SSIM is computed per axial slice and averaged over the slices.

SSIM follows Wang et al. (2004): Gaussian window 11 x 11 with sigma 1.5 (normalised to sum 1),
K1 = 0.01, K2 = 0.03, data range 1. Padding: 'same' with zeros, and the SSIM map is averaged over
every pixel, borders included - this is what the RPLHR-CT authors' evaluation computes, so numbers
compare with the paper's tables. (A 'valid' SSIM, which drops a 5-pixel border, gives slightly
different values.)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .intensity import HU_MAX, HU_MIN, hu_to_unit

WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1 = 0.01
K2 = 0.03
PROTOCOL_TRIM = 5


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """1D Gaussian weights centred on the middle tap, summing to 1 (float64)."""
    offsets = np.arange(size, dtype=np.float64) - size // 2
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of two arrays on the [0, 1] scale (peak 1); inf when they are identical.

    (The authors' code reports 40 dB for identical volumes, which never happens with real data.)
    """
    pred, truth = _same_shape(pred, truth)
    mse = float(np.mean((pred - truth) ** 2))
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two 2D images on the [0, 1] scale ('same' size, zero padding)."""
    a, b = _same_shape(a, b)
    if a.ndim != 2:
        raise ValueError(f"SSIM needs 2D images, got shape {a.shape}")
    window = gaussian_window()

    def local_mean(image: np.ndarray) -> np.ndarray:
        rows = ndimage.correlate1d(image, window, axis=0, mode="constant", cval=0.0)
        return ndimage.correlate1d(rows, window, axis=1, mode="constant", cval=0.0)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = K1**2, K2**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim_2d(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two 2D images on the [0, 1] scale."""
    return float(ssim_map(a, b).mean())


def ssim_axial(pred: np.ndarray, truth: np.ndarray) -> float:
    """SSIM of each axial slice of two (K, J, I) volumes, averaged over the slices."""
    pred, truth = _same_shape(pred, truth)
    if pred.ndim != 3 or pred.shape[0] == 0:
        raise ValueError(f"axial SSIM needs (K, J, I) volumes with at least one slice, got {pred.shape}")
    return float(np.mean([ssim_2d(pred[n], truth[n]) for n in range(pred.shape[0])]))


def protocol_slices(n: int, trim: int = PROTOCOL_TRIM) -> slice:
    """The thin slices scored by the protocol: all but the first and last `trim`."""
    if n <= 2 * trim:
        raise ValueError(
            f"a volume of {n} thin slices has none left after leaving out {trim} at each end; "
            f"scoring needs at least {2 * trim + 1}"
        )
    return slice(trim, n - trim)


def score_volume(
    pred_hu: np.ndarray,
    truth_hu: np.ndarray,
    window: tuple[float, float] = (HU_MIN, HU_MAX),
    trim: int = PROTOCOL_TRIM,
) -> dict[str, float]:
    """PSNR and SSIM of a thin prediction against the thin truth (both HU, (K, J, I)), paper protocol."""
    if np.shape(pred_hu) != np.shape(truth_hu):
        raise ValueError(
            f"prediction {np.shape(pred_hu)} and truth {np.shape(truth_hu)} are not on the same grid"
        )
    if np.ndim(pred_hu) != 3:
        raise ValueError(f"scoring needs (K, J, I) volumes, got shape {np.shape(pred_hu)}")
    kept = protocol_slices(np.shape(pred_hu)[0], trim)
    pred = hu_to_unit(np.asarray(pred_hu)[kept], window)
    truth = hu_to_unit(np.asarray(truth_hu)[kept], window)
    return {"psnr": psnr(pred, truth), "ssim": ssim_axial(pred, truth)}


TISSUES = {"lung": (-1024.0, -500.0), "soft_tissue": (-500.0, 300.0), "bone": (300.0, math.inf)}
"""HU ranges of the truth (low inclusive, high exclusive) whose voxels the per-region PSNR counts."""


def ssim_planes(pred: np.ndarray, truth: np.ndarray, axis: int) -> float:
    """SSIM of each plane across `axis` of two (K, J, I) volumes (1: coronal, 2: sagittal), averaged."""
    pred, truth = _same_shape(pred, truth)
    return float(
        np.mean([ssim_2d(np.take(pred, n, axis), np.take(truth, n, axis)) for n in range(pred.shape[axis])])
    )


def detailed_scores(
    pred_hu: np.ndarray,
    truth_hu: np.ndarray,
    ratio: int,
    window: tuple[float, float] = (HU_MIN, HU_MAX),
    trim: int = PROTOCOL_TRIM,
) -> dict[str, float]:
    """Beside the protocol's scores, on the same slices: PSNR of the thin slices between thick ones only
    (thin slice r k lies on thick slice k: "Match" slices nearly equal the input), SSIM of the coronal
    and sagittal planes, and PSNR within the truth's lung, soft-tissue and bone HU ranges (NaN where
    a range holds no voxel)."""
    kept = protocol_slices(np.shape(pred_hu)[0], trim)
    pred = hu_to_unit(np.asarray(pred_hu, dtype=np.float64)[kept], window)
    truth = hu_to_unit(np.asarray(truth_hu, dtype=np.float64)[kept], window)
    between = (np.arange(np.shape(pred_hu)[0])[kept] % ratio) != 0
    scores = {
        "psnr_between": psnr(pred[between], truth[between]) if between.any() else math.nan,
        "ssim_coronal": ssim_planes(pred, truth, 1),
        "ssim_sagittal": ssim_planes(pred, truth, 2),
    }
    truth_hu_kept = np.asarray(truth_hu, dtype=np.float64)[kept]
    for name, (low, high) in TISSUES.items():
        inside = (truth_hu_kept >= low) & (truth_hu_kept < high)
        scores[f"psnr_{name}"] = psnr(pred[inside], truth[inside]) if inside.any() else math.nan
    return scores


def _same_shape(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the arrays differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("the arrays are empty")
    return a, b

"""Whole-volume super-resolution: the network slides over depth windows and in-plane tiles.

A window of D thick slices starting at thick slice k0 predicts thin slices r*k0 ... r*(k0+D-1).
Where depth windows overlap their predictions are averaged (as in the paper); in-plane tiles are
blended with a raised-cosine ramp across each inner overlap. Both weights are separable, so the
result is normalised by depth_sum[z] * plane_sum[y, x] without a full weight volume. The authors'
scheme (depth_blend "center") instead keeps the central thin slices of each window, later windows
overwriting earlier ones.

Precision: float32 on the CPU unless bfloat16 is asked for (on a CPU with native bfloat16); on a GPU
autocast to bfloat16 where it is supported, else float16, unless `amp` is off.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .. import geometry
from ..checks import InputError, is_whole_number
from ..intensity import HU_MAX, HU_MIN, hu_to_unit, unit_to_hu
from .allocator import reuse_freed_memory
from .device import describe_device, resolve_device

ProgressCallback = Callable[[float, str], None]

MIN_TILE = 8
HU_CHUNK_SLICES = 16
DEPTH_BLENDS = ("mean", "center")
GPU_BYTES_PER_PIXEL = 6 * 1024
"""Estimated GPU memory of one window per in-plane pixel in float32 (CPU peak measured at about
4.6 kB per pixel for 512 x 512 windows), halved under autocast; used to choose the batch."""
MAX_AUTO_BATCH = 16


@dataclass
class PredictOptions:
    """How the predictor runs; the defaults are the paper's (whole slices, depth overlap 1).

    `batch` None chooses it: 1 on the CPU, from free memory on a GPU. `amp`: half precision on a
    GPU (bfloat16 where supported, else float16). `cpu_bf16`: bfloat16 autocast on a CPU with native
    bfloat16 (faster, about 2 HU mean difference). `depth_blend`: "mean" averages the thin slices
    that overlapping windows share; "center" keeps the central ones, later windows overwriting
    earlier ones (the authors' scheme, with depth_overlap 2). `reuse_memory`: keep freed memory
    for reuse during a CPU run (allocator.reuse_freed_memory).
    """

    device: str = "auto"
    tile: int | None = None
    tile_overlap: int = 32
    depth_overlap: int = 1
    batch: int | None = 1
    amp: bool = True
    cpu_bf16: bool = False
    depth_blend: str = "mean"
    reuse_memory: bool = True


class WindowWarning(UserWarning):
    """Some input voxels lie outside the model's HU window and are clipped to it."""


class PredictionCancelled(Exception):
    """The caller's cancel() returned true; no result was produced."""


@dataclass(frozen=True)
class Tiling:
    """Where the pieces of one volume go: depth window starts and in-plane tile starts."""

    depth_starts: list[int]
    row_starts: list[int]
    col_starts: list[int]
    tile_shape: tuple[int, int]
    overlap: int

    @property
    def pieces(self) -> list[tuple[int, int, int]]:
        """(window index, row-tile index, column-tile index), window by window."""
        return [
            (w, r, c)
            for w in range(len(self.depth_starts))
            for r in range(len(self.row_starts))
            for c in range(len(self.col_starts))
        ]

    @property
    def tile_count(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


def super_resolve_unit(
    model: nn.Module,
    thick: np.ndarray,
    options: PredictOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Thick volume (K, J, I) in [0, 1] -> thin volume ((K-1)*r+1, J, I) float32 in [0, 1].

    `model` maps (B, D, h, w) to (B, (D-1)*r+1, h, w) and has `cfg.depth` (D) and `cfg.ratio` (r): TVSRN
    or any network of networks.build_network.
    It is moved to the chosen device and left there; its train/eval mode is restored afterwards.
    `progress(fraction, message)` is called at the start, after every batch and at the end;
    `cancel()` is asked before every batch and, when true, stops with PredictionCancelled.
    """
    options = options if options is not None else PredictOptions()
    depth, ratio = _model_shape(model)
    volume = np.ascontiguousarray(_checked_volume(thick, depth), dtype=np.float32)
    if not volume.flags.writeable:
        volume = volume.copy()
    _check_unit_range(volume)
    _check_options(options, depth)
    device = resolve_device(options.device)
    tiling = plan_tiling(volume.shape, depth, options)
    if options.batch is None:
        options = replace(options, batch=auto_batch(device, tiling.tile_shape, options.amp))
    autocast = _autocast(device, options)
    report = progress if progress is not None else _no_progress
    was_training = model.training
    model.to(device).eval()
    try:
        with reuse_freed_memory(options.reuse_memory and device.type == "cpu"):
            return _predict(model, volume, tiling, depth, ratio, device, options, autocast, report, cancel)
    finally:
        model.train(was_training)


def auto_batch(device: torch.device, tile_shape: tuple[int, int], amp: bool) -> int:
    """Windows per network call: 1 on the CPU (one window already uses every core); on a GPU as
    many as half of its free memory holds by GPU_BYTES_PER_PIXEL, at most MAX_AUTO_BATCH."""
    if device.type != "cuda":
        return 1
    free, _total = torch.cuda.mem_get_info(device)
    per_window = GPU_BYTES_PER_PIXEL * tile_shape[0] * tile_shape[1] / (2 if amp else 1)
    return int(max(1, min(MAX_AUTO_BATCH, free // 2 // per_window)))


def bf16_cpu_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), checked by oneDNN."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _autocast(device: torch.device, options: PredictOptions) -> contextlib.AbstractContextManager:
    """The precision context of the network calls."""
    if device.type == "cuda" and options.amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and options.cpu_bf16:
        if not bf16_cpu_supported():
            raise InputError(
                "this CPU has no native bfloat16 arithmetic (AVX-512 BF16 or AMX); leave bfloat16 off"
            )
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def super_resolve_hu(
    model: nn.Module,
    hu: np.ndarray,
    affine: np.ndarray,
    options: PredictOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    window: tuple[float, float] = (HU_MIN, HU_MAX),
    trained_spacing_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Thick HU volume (K, J, I) and its voxel-to-world affine -> (thin HU float32, thin affine).

    The input and its geometry are checked before any prediction: the slice spacing must suit a
    model trained on `trained_spacing_mm` (geometry.check_slice_spacing), HU are clipped to `window`.
    """
    options = options if options is not None else PredictOptions()
    depth, ratio = _model_shape(model)
    volume = _checked_volume(hu, depth)
    window = _checked_window(window)
    _check_options(options, depth)
    try:
        thick_affine = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise geometry.GeometryError("the voxel-to-world matrix must be a 4 x 4 array of numbers") from error
    grid = geometry.thin_grid(thick_affine, volume.shape[0], ratio)
    geometry.check_slice_spacing(float(geometry.voxel_spacing(thick_affine)[2]), trained_spacing_mm, ratio)
    _warn_outside_window(volume, window)
    thin = super_resolve_unit(model, hu_to_unit(volume, window), options, progress, cancel)
    for z0 in range(0, thin.shape[0], HU_CHUNK_SLICES):
        thin[z0 : z0 + HU_CHUNK_SLICES] = unit_to_hu(thin[z0 : z0 + HU_CHUNK_SLICES], window)
    return thin, grid.affine


def _warn_outside_window(volume: np.ndarray, window: tuple[float, float]) -> None:
    """Say how many voxels the window clips, and what the output holds there."""
    lo, hi = window
    above, below = int(np.count_nonzero(volume > hi)), int(np.count_nonzero(volume < lo))
    if above:
        warnings.warn(
            f"{above} input voxels are above {hi:g} HU (metal or dense contrast): the model sees them as "
            f"{hi:g} HU and the output holds at most {hi:g} HU there",
            WindowWarning,
            stacklevel=3,
        )
    if below:
        warnings.warn(
            f"{below} input voxels are below {lo:g} HU (outside the scanned field of view, or air): the "
            f"model sees them as {lo:g} HU and the output holds {lo:g} HU or more there",
            WindowWarning,
            stacklevel=3,
        )


def _predict(
    model: nn.Module,
    volume: np.ndarray,
    tiling: Tiling,
    depth: int,
    ratio: int,
    device: torch.device,
    options: PredictOptions,
    autocast: contextlib.AbstractContextManager,
    report: ProgressCallback,
    cancel: Callable[[], bool] | None,
) -> np.ndarray:
    """Run every (window, tile) piece in batches and blend the predictions into the thin grid."""
    slices, rows, cols = volume.shape
    thin_depth = (depth - 1) * ratio + 1
    windows, tiles = len(tiling.depth_starts), tiling.tile_count
    th, tw = tiling.tile_shape
    row_weights = [_tile_weight(s, th, rows, tiling.overlap) for s in tiling.row_starts]
    col_weights = [_tile_weight(s, tw, cols, tiling.overlap) for s in tiling.col_starts]
    plane_sum = np.zeros((rows, cols), dtype=np.float32)
    for r, r0 in enumerate(tiling.row_starts):
        for c, c0 in enumerate(tiling.col_starts):
            plane_sum[r0 : r0 + th, c0 : c0 + tw] += np.outer(row_weights[r], col_weights[c])
    depth_sum = np.zeros(geometry.thin_slice_count(slices, ratio), dtype=np.float32)
    kept = [_kept_range(i, tiling.depth_starts, thin_depth, ratio, options) for i in range(windows)]
    for lo, hi in kept:
        depth_sum[lo:hi] = 1.0 if options.depth_blend == "center" else depth_sum[lo:hi] + 1.0

    thin = np.zeros((depth_sum.size, rows, cols), dtype=np.float32)
    source = torch.from_numpy(volume)
    pieces = tiling.pieces
    report(0.0, f"{windows} windows x {tiles} tiles on {describe_device(device)}")
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for first in range(0, len(pieces), options.batch):
            if cancel is not None and cancel():
                raise PredictionCancelled("super-resolution was cancelled")
            batch = pieces[first : first + options.batch]
            inputs = torch.stack(
                [
                    source[k0 : k0 + depth, r0 : r0 + th, c0 : c0 + tw]
                    for k0, r0, c0 in (_piece_origin(tiling, piece) for piece in batch)
                ]
            )
            inputs = inputs.pin_memory().to(device, non_blocking=True) if cuda else inputs
            with autocast:
                outputs = model(inputs)
            expected = (len(batch), thin_depth, th, tw)
            if tuple(outputs.shape) != expected:
                raise RuntimeError(f"the model returned shape {tuple(outputs.shape)}, expected {expected}")
            predictions = outputs.float().cpu().numpy()
            for index, (w, r, c) in enumerate(batch):
                k0, r0, c0 = _piece_origin(tiling, (w, r, c))
                lo, hi = kept[w]
                first_slice = lo - ratio * k0
                target = thin[lo:hi, r0 : r0 + th, c0 : c0 + tw]
                if options.depth_blend == "center" and r == 0 and c == 0:
                    thin[lo:hi] = 0.0  # later windows overwrite what earlier ones kept here
                target += predictions[index, first_slice : first_slice + hi - lo] * np.outer(
                    row_weights[r], col_weights[c]
                )
            report((first + len(batch)) / len(pieces), _where(batch[-1], windows, len(col_weights), tiles))
    thin /= depth_sum[:, None, None]
    thin /= plane_sum
    np.clip(thin, 0.0, 1.0, out=thin)
    report(1.0, "done")
    return thin


def _kept_range(
    window: int, starts: list[int], thin_depth: int, ratio: int, options: PredictOptions
) -> tuple[int, int]:
    """Thin slices [lo, hi) that a depth window writes: all of them, or with depth_blend "center"
    the central ratio * (depth - depth_overlap) of them (the first and last window keep their ends)."""
    lo, hi = ratio * starts[window], ratio * starts[window] + thin_depth
    if options.depth_blend != "center":
        return lo, hi
    depth = (thin_depth - 1) // ratio + 1
    trim = (thin_depth - ratio * (depth - options.depth_overlap)) // 2
    return (lo if window == 0 else lo + trim), (hi if window == len(starts) - 1 else hi - trim)


def _where(piece: tuple[int, int, int], windows: int, cols: int, tiles: int) -> str:
    """Progress message for the last piece of a batch, e.g. "window 3/12, tile 2/4"."""
    w, r, c = piece
    return f"window {w + 1}/{windows}" + (f", tile {r * cols + c + 1}/{tiles}" if tiles > 1 else "")


def _piece_origin(tiling: Tiling, piece: tuple[int, int, int]) -> tuple[int, int, int]:
    """Thick slice, row and column where a piece starts."""
    w, r, c = piece
    return tiling.depth_starts[w], tiling.row_starts[r], tiling.col_starts[c]


def plan_tiling(shape: tuple[int, ...], depth: int, options: PredictOptions) -> Tiling:
    """Depth windows and in-plane tiles of a (K, J, I) volume for windows of `depth` slices."""
    slices, rows, cols = shape
    if options.tile is None:
        tile_shape, overlap = (rows, cols), 0
    else:
        tile_shape, overlap = (min(options.tile, rows), min(options.tile, cols)), options.tile_overlap
    return Tiling(
        depth_starts=_window_starts(slices, depth, depth - options.depth_overlap),
        row_starts=_window_starts(rows, tile_shape[0], tile_shape[0] - overlap),
        col_starts=_window_starts(cols, tile_shape[1], tile_shape[1] - overlap),
        tile_shape=tile_shape,
        overlap=overlap,
    )


def _window_starts(length: int, size: int, stride: int) -> list[int]:
    """Starts 0, stride, 2*stride, ... with the last window anchored at length - size."""
    if size >= length:
        return [0]
    return [*range(0, length - size, stride), length - size]


def _tile_weight(start: int, size: int, length: int, overlap: int) -> np.ndarray:
    """1D blending weight of one tile: a raised-cosine ramp over each inner overlap, 1 elsewhere.

    The ramp never reaches zero (every pixel keeps a positive weight) and never falls at the image
    border; two ramps overlapping by exactly `overlap` pixels sum to one.
    """
    weight = np.ones(size, dtype=np.float32)
    if overlap == 0:
        return weight
    ramp = (0.5 - 0.5 * np.cos(math.pi * (np.arange(overlap) + 0.5) / overlap)).astype(np.float32)
    if start > 0:
        weight[:overlap] = ramp
    if start + size < length:
        weight[size - overlap :] = ramp[::-1]
    return weight


def _model_shape(model: nn.Module) -> tuple[int, int]:
    """(D, r) from model.cfg."""
    cfg = getattr(model, "cfg", None)
    depth, ratio = getattr(cfg, "depth", None), getattr(cfg, "ratio", None)
    if not (is_whole_number(depth) and depth >= 2 and is_whole_number(ratio) and ratio >= 1):
        raise TypeError(
            "the model needs a cfg with integer depth (>= 2) and ratio (>= 1), like TVSRN and the baselines"
        )
    return int(depth), int(ratio)


def _checked_volume(array: np.ndarray, depth: int) -> np.ndarray:
    """The volume as an array after the checks every input gets (shape, slice count, finite)."""
    volume = np.asarray(array)
    if volume.dtype.kind not in "iuf":
        raise InputError(f"the volume must hold numbers, got values of type {volume.dtype}")
    if volume.size == 0:
        raise InputError(f"the volume is empty (shape {volume.shape}); load a volume that has image data")
    if volume.ndim != 3:
        raise InputError(
            f"expected a 3D volume (slices, rows, columns), got a {volume.ndim}D array of shape "
            f"{volume.shape}; load the whole series, not a single image"
        )
    if volume.shape[0] < depth:
        raise InputError(
            f"the model needs at least {depth} slices, got {volume.shape[0]}; "
            f"super-resolve a series of at least {depth} slices"
        )
    finite = np.count_nonzero(np.isfinite(volume))
    if finite != volume.size:
        raise InputError(
            f"the volume has {volume.size - finite} NaN or infinite values; replace them "
            "(e.g. with the value of air) before super-resolving"
        )
    return volume


def _check_unit_range(volume: np.ndarray) -> None:
    lo, hi = float(volume.min()), float(volume.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"the values span {lo:.4g} to {hi:.4g}, outside [0, 1]; map HU to [0, 1] with "
            "intensity.hu_to_unit (or use super_resolve_hu)"
        )


def _check_options(options: PredictOptions, depth: int) -> None:
    if options.tile is not None:
        if not is_whole_number(options.tile) or options.tile < MIN_TILE:
            raise InputError(f"tile {options.tile!r} is too small; use at least {MIN_TILE} pixels, or None")
        if options.tile < 2 * options.tile_overlap:
            raise InputError(
                f"tile {options.tile} is smaller than twice the tile overlap ({options.tile_overlap}); "
                f"use a tile of at least {2 * options.tile_overlap} pixels or a smaller tile_overlap"
            )
    if not is_whole_number(options.tile_overlap) or options.tile_overlap < 0:
        raise InputError(f"tile_overlap must be a whole number >= 0, got {options.tile_overlap!r}")
    if not is_whole_number(options.depth_overlap) or not 1 <= options.depth_overlap < depth:
        raise InputError(
            f"depth_overlap must be between 1 and {depth - 1} for windows of {depth} slices, got "
            f"{options.depth_overlap!r}; with 0 the thin slices between two windows would be missing"
        )
    if options.batch is not None and (not is_whole_number(options.batch) or options.batch < 1):
        raise InputError(f"batch must be at least 1 (or None to choose it), got {options.batch!r}")
    if options.depth_blend not in DEPTH_BLENDS:
        raise InputError(f"depth_blend must be one of {DEPTH_BLENDS}, got {options.depth_blend!r}")


def _checked_window(window: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError) as error:
        raise InputError(f"the HU window must be two numbers (low, high), got {window!r}") from error
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"the HU window must satisfy low < high, got ({lo}, {hi})")
    return lo, hi


def _no_progress(fraction: float, message: str) -> None:
    """Progress sink when the caller gives none."""

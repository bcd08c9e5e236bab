"""GPU out-of-memory recovery: retry with a smaller batch, then smaller tiles, then on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .device import resolve_device
from .predictor import PredictOptions, auto_batch, plan_tiling, super_resolve_hu

MIN_RETRY_TILE = 64


def next_attempt(
    current: PredictOptions,
    requested: PredictOptions,
    slice_shape: tuple[int, int],
    min_tile: int = MIN_RETRY_TILE,
) -> PredictOptions | None:
    """The options to retry with after a GPU out-of-memory error, or None when nothing is left.

    Halve the batch down to 1; then use in-plane tiles, each the next power of two below the
    current tile (the whole slice at first), down to `min_tile` (at least twice the tile overlap);
    then run the `requested` options on the CPU in float32.
    """
    if current.batch is not None and current.batch > 1:
        return replace(current, batch=current.batch // 2)
    tile = current.tile if current.tile is not None else max(slice_shape)
    smaller = 1 << ((int(tile) - 1).bit_length() - 1)
    if smaller >= max(min_tile, 2 * current.tile_overlap):
        return replace(current, tile=smaller, batch=1)
    if str(current.device).lower() != "cpu":
        return replace(requested, device="cpu", amp=False, batch=1)
    return None


def describe_change(before: PredictOptions, after: PredictOptions) -> str:
    """One line for people: what the retry changes."""
    if after.device != before.device:
        return "GPU out of memory: running on the CPU instead (slower)"
    if after.batch != before.batch and after.tile == before.tile:
        return f"GPU out of memory: retrying with batch {after.batch}"
    return f"GPU out of memory: retrying with {after.tile} x {after.tile} tiles"


def super_resolve_with_fallback(
    model: nn.Module,
    hu: np.ndarray,
    affine: np.ndarray,
    options: PredictOptions,
    *,
    on_fallback: Callable[[str], None] | None = None,
    predict: Callable[..., tuple[np.ndarray, np.ndarray]] = super_resolve_hu,
    **predict_arguments,
) -> tuple[np.ndarray, np.ndarray, PredictOptions, tuple[str, ...]]:
    """`super_resolve_hu` that recovers from GPU out-of-memory errors (see next_attempt).

    Returns (thin HU, thin affine, the options that succeeded, what was changed on the way).
    Raises MemoryError when even the CPU run ran out of GPU memory (it cannot) or nothing is left.
    """
    attempt, fallbacks = options, []
    if attempt.batch is None:
        device = resolve_device(attempt.device)
        tile_shape = plan_tiling(np.shape(hu), _depth(model), attempt).tile_shape
        attempt = replace(attempt, batch=auto_batch(device, tile_shape, attempt.amp))
    while True:
        try:
            thin, thin_affine = predict(model, hu, affine, attempt, **predict_arguments)
            return thin, thin_affine, attempt, tuple(fallbacks)
        except torch.cuda.OutOfMemoryError as error:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            retry = next_attempt(attempt, options, tuple(np.shape(hu)[1:]))
            if retry is None:
                raise MemoryError(
                    "out of memory even with batch 1, the smallest tiles and the CPU; close other "
                    f"programs or crop the volume ({error})"
                ) from error
            note = describe_change(attempt, retry)
            fallbacks.append(note)
            if on_fallback is not None:
                on_fallback(note)
            attempt = retry


def _depth(model: nn.Module) -> int:
    return int(model.cfg.depth)

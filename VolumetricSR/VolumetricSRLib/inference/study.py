"""One study, thick volume in, thin volume out: the steps `volumetricsr predict` runs on each input.

1. The slice axis is found from the affine (geometry.thick_axis) and moved to array axis 0.
   If asked, a copy of the network is first adapted to the scan (adapt.adapt_to_scan).
2. The network predicts the thin grid (input spacing / r, with GPU out-of-memory fallbacks).
3. The prediction is checked against the measured slices (consistency.check_consistency, the card's
   slab profile and window) and, if asked, corrected to agree with them (enforce_consistency). With
   fewer than 3 thick slices there is no full slab: no check (a warning says so), and enforcing is
   refused.
4. If the output spacing differs from the model's own, the thin volume is resampled along the slice
   axis with a cubic B-spline (slice_resampling) onto geometry.spaced_grid; the check then says it
   was made on the model's grid, and enforcing (which resampling would undo) is refused.
5. The slice axis goes back where it was: the output is laid out like the input.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..geometry import slice_axis_first, spaced_grid, thick_axis, voxel_spacing
from ..intensity import to_int16_hu
from ..models.model_cards import ModelCard
from .adapt import Adaptation, AdaptOptions, adapt_to_scan
from .consistency import Consistency, check_consistency, enforce_consistency, slab_of
from .fallback import super_resolve_with_fallback
from .output_plan import MIN_CHECKED_SLICES, plan_output
from .predictor import PredictOptions
from .slice_resampling import resample_slices, resampling_positions


@dataclass(frozen=True)
class StudyOptions:
    """How one study is made: predictor options, output spacing (None: the card's thin spacing),
    whether the prediction is corrected to agree with the measured slices, and the adaptation to the
    scan before it (none by default)."""

    predict: PredictOptions = field(default_factory=PredictOptions)
    spacing_mm: float | None = None
    enforce_consistency: bool = False
    adapt: AdaptOptions = field(default_factory=AdaptOptions)


@dataclass
class ThinStudy:
    """The thin output (int16 HU, laid out like the input) and how it was made."""

    hu: np.ndarray
    affine: np.ndarray
    consistency: Consistency | None
    used: PredictOptions
    fallbacks: tuple[str, ...]
    slice_axis: int
    resampling: str | None  # e.g. "cubic B-spline from 0.6 mm to 1 mm", None on the model's own grid
    adaptation: Adaptation | None = None


def super_resolve_study(
    model: nn.Module,
    card: ModelCard,
    hu: np.ndarray,
    affine: np.ndarray,
    options: StudyOptions,
    *,
    on_fallback: Callable[[str], None] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> ThinStudy:
    """Super-resolve a thick (K, J, I) HU volume whose slice axis may be any array axis."""
    axis = thick_axis(affine)
    thick_hu, thick_affine = slice_axis_first(np.asarray(hu), affine, axis)
    input_mm = float(voxel_spacing(thick_affine)[2])
    target = plan_output(thick_hu.shape[0], input_mm, card, options.spacing_mm, options.enforce_consistency)
    native_mm = input_mm / card.ratio
    adaptation = None
    if options.adapt.steps:
        device = options.predict.device
        model, adaptation = adapt_to_scan(model, card, thick_hu, options.adapt, device, progress)
    thin, thin_affine, used, fallbacks = super_resolve_with_fallback(
        model,
        thick_hu,
        thick_affine,
        options.predict,
        on_fallback=on_fallback,
        progress=progress,
        window=card.window,
        trained_spacing_mm=card.thick_spacing_mm,
    )
    thin_hu = to_int16_hu(thin)
    del thin
    thin_hu, consistency = _checked(thin_hu, thick_hu, card, options.enforce_consistency)
    resampling = None
    if target is not None:
        grid = spaced_grid(thick_affine, thick_hu.shape[0], target)
        positions = resampling_positions(native_mm, target, grid.slices)
        thin_hu = to_int16_hu(np.clip(resample_slices(thin_hu, positions), *card.window))
        thin_affine = grid.affine
        resampling = f"cubic B-spline from {native_mm:.4g} mm to {target:.4g} mm"
        if consistency is not None:
            consistency = consistency.on_model_grid(native_mm)
    out, out_affine = slice_axis_first(thin_hu, thin_affine, axis)
    return ThinStudy(
        np.ascontiguousarray(out), out_affine, consistency, used, fallbacks, axis, resampling, adaptation
    )


def _checked(
    thin_hu: np.ndarray, thick_hu: np.ndarray, card: ModelCard, enforce: bool
) -> tuple[np.ndarray, Consistency | None]:
    """The consistency check of the prediction (None for an even ratio, or without a full slab: a
    warning says so), after enforcing it if asked."""
    if card.ratio % 2 == 0:
        return thin_hu, None
    if thick_hu.shape[0] < MIN_CHECKED_SLICES:
        warnings.warn(
            f"no consistency check: {thick_hu.shape[0]} thick slices leave no full slab of thin slices "
            f"between the first and the last (at least {MIN_CHECKED_SLICES} are needed)",
            stacklevel=3,
        )
        return thin_hu, None
    slab = slab_of(card.training)
    check = check_consistency(thin_hu, thick_hu, card.ratio, card.window, slab)
    if not enforce:
        return thin_hu, check
    corrected = to_int16_hu(enforce_consistency(thin_hu, thick_hu, card.ratio, card.window, slab))
    after = check_consistency(corrected, thick_hu, card.ratio, card.window, slab)
    return corrected, after.after_enforcing(check)

"""What a study's output will be, decided before any model loads (no torch: Slicer's GUI process checks
a run with it before it starts the child): the output slice spacing, and whether consistency with the
measured slices can be enforced on it. The command line and the Slicer module refuse the same
settings with the same words."""

from __future__ import annotations

import warnings

import numpy as np

from ..checks import InputError
from ..geometry import GeometryError, SpacingWarning
from ..models.model_cards import ModelCard
from .slice_resampling import SAME_SPACING, is_native_spacing

MIN_CHECKED_SLICES = 3
"""Thick slices the consistency check needs: the first and last have only half a slab on the thin grid."""


def plan_output(
    thick_slices: int, input_mm: float, card: ModelCard, requested_mm: float | None, enforce: bool
) -> float | None:
    """The spacing to resample the model's slices to (None: its own grid); GeometryError or InputError,
    worded for the panel and the command line, for settings that cannot work."""
    if enforce and card.ratio % 2 == 0:
        raise InputError(
            f"enforcing consistency (--enforce-consistency) needs an odd ratio (each thick slice on a thin "
            f"one); {card.id} is x{card.ratio}: choose an odd-ratio model or do not enforce consistency"
        )
    target = output_spacing(input_mm, card, requested_mm)
    if enforce:
        check_enforceable(thick_slices, input_mm, card.ratio, target, requested_mm)
    return target


def output_spacing(input_mm: float, card: ModelCard, requested_mm: float | None) -> float | None:
    """The spacing to resample the model's slices to, or None to keep the model's own (input / r).

    `requested_mm` must be finer than the input; without it the card's thin spacing is used when it
    is finer than the input (else the model's grid: the predictor refuses inputs that thin anyway).
    Output slices finer than the model's are interpolated, and a warning says so.
    """
    native_mm = input_mm / card.ratio
    if requested_mm is not None:
        if not np.isfinite(requested_mm) or requested_mm <= 0:
            raise GeometryError(f"--spacing must be a positive number of mm, got {requested_mm!r}")
        if requested_mm >= input_mm * (1 - SAME_SPACING):
            raise GeometryError(
                f"--spacing {requested_mm:g} mm is not finer than the input's {input_mm:.4g} mm slices; "
                f"choose a spacing below {input_mm:.4g} mm (the model makes {native_mm:.4g} mm slices)"
            )
        target = requested_mm
    elif card.thin_spacing_mm is not None and card.thin_spacing_mm < input_mm * (1 - SAME_SPACING):
        target = float(card.thin_spacing_mm)
    else:
        return None
    if is_native_spacing(native_mm, target):
        return None
    if target < native_mm:
        warnings.warn(
            f"output slices {target:.4g} mm apart are finer than the model's {native_mm:.4g} mm "
            f"({input_mm:.4g} mm / {card.ratio}): the slices between the model's are cubic-interpolated",
            SpacingWarning,
            stacklevel=2,
        )
    return target


def check_enforceable(
    thick_slices: int, input_mm: float, ratio: int, target_mm: float | None, requested_mm: float | None
) -> None:
    """Refuse --enforce-consistency where it cannot hold in the output: no full slab to correct, or an
    output resampled off the model's grid (which would undo the correction)."""
    if thick_slices < MIN_CHECKED_SLICES:
        raise InputError(
            f"enforcing consistency (--enforce-consistency) needs at least {MIN_CHECKED_SLICES} thick slices "
            f"(a full slab of thin slices between the first and the last); the input has {thick_slices}: "
            "do not enforce consistency"
        )
    if target_mm is not None:
        native_mm = input_mm / ratio
        instead = "" if requested_mm is None else f" instead of {requested_mm:g} mm"
        raise InputError(
            f"enforcing consistency (--enforce-consistency) corrects the model's own {native_mm:.4g} mm "
            f"slices (input {input_mm:.4g} mm / {ratio}), but the output would be resampled to "
            f"{target_mm:.4g} mm, which undoes the correction; set the output spacing to {native_mm:.4g} mm"
            f"{instead} (--spacing {native_mm:.4g}) to keep the model's slices, or do not enforce consistency"
        )

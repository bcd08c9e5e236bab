"""The geometry rule: where the thin slices lie in world space. The one place it lives.

Affines map voxel indices (i, j, k) to world coordinates (either RAS or LPS, the rule does not
care); arrays are stored (k, j, i). Output slice j lies at input slice j / r.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .checks import is_positive_whole_number


class GeometryError(ValueError):
    """The input's geometry cannot be super-resolved."""


class SpacingWarning(UserWarning):
    """The input's slice spacing differs from what the model was trained for."""


@dataclass(frozen=True)
class ThinGrid:
    """The output grid: its affine and slice count."""

    affine: np.ndarray
    slices: int


def thin_slice_count(thick_slices: int, ratio: int) -> int:
    """(K - 1) * r + 1."""
    return (thick_slices - 1) * ratio + 1


def thin_grid(thick_affine: np.ndarray, thick_slices: int, ratio: int) -> ThinGrid:
    """Thin grid of a thick volume: slice axis divided by r, origin and in-plane axes untouched."""
    if not is_positive_whole_number(ratio):
        raise GeometryError(f"the ratio must be a positive integer, got {ratio!r}")
    affine = np.asarray(thick_affine, dtype=np.float64)
    validate_affine(affine)
    thin = affine.copy()
    thin[:3, 2] = affine[:3, 2] / ratio
    return ThinGrid(thin, thin_slice_count(thick_slices, int(ratio)))


def validate_affine(affine: np.ndarray) -> None:
    """Refuse affines without a usable slice axis."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError("the volume has no valid 4 x 4 voxel-to-world matrix")
    spacing = voxel_spacing(affine)
    if np.any(spacing <= 1e-6):
        axis = "slice" if spacing[2] <= 1e-6 else "in-plane"
        raise GeometryError(
            f"the volume's {axis} spacing is missing or zero; fix the file's header (pixel spacing "
            "and slice spacing) before super-resolving"
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9 * np.prod(spacing):
        raise GeometryError("the volume's axes are degenerate (the direction matrix is singular)")


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Spacing along i, j, k in world units (mm)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_slice_spacing(spacing_mm: float, trained_mm: float | None, ratio: int) -> None:
    """Warn when the input spacing is far from the model's; refuse when it makes no sense.

    A model trained on thick spacing T with ratio r makes T / r slices. Inputs between T / 2 and
    2 T pass; others get a warning; inputs already as thin as T / r (or without a spacing) are
    refused, since super-resolving them would only invent slices between real thin ones.
    """
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise GeometryError(f"the slice spacing {spacing_mm} mm makes no sense")
    if trained_mm is None:
        return
    if spacing_mm <= trained_mm / ratio * 1.001:
        raise GeometryError(
            f"input slices are {spacing_mm:.3g} mm apart, already as thin as this model's output "
            f"({trained_mm / ratio:.3g} mm); it needs thick slices near {trained_mm:.3g} mm"
        )
    if not 0.5 <= spacing_mm / trained_mm <= 2.0:
        warnings.warn(
            f"input slices are {spacing_mm:.3g} mm apart but the model was trained on "
            f"{trained_mm:.3g} mm slices: expect a poorer result",
            SpacingWarning,
            stacklevel=2,
        )

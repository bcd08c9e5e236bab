"""The geometry rule: where the thin slices lie in world space. The one place it lives.

Affines map voxel indices (i, j, k) to world coordinates (either RAS or LPS, the rule does not
care); arrays are stored (k, j, i). Output slice j lies at input slice j / r (thin_grid), or, for a
chosen output spacing s', at input slice j s' / s (spaced_grid). The slice axis is the array axis
whose spacing is clearly the largest (thick_axis); slice_axis_first moves it to array axis 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .checks import is_positive_whole_number


class GeometryError(ValueError):
    """The input's geometry cannot be super-resolved."""


THICK_AXIS_MIN_RATIO = 1.2
"""The slice axis's spacing must be at least this many times every other axis's spacing."""
SPACING_TOLERANCE = 1e-6
"""Relative slack when counting output slices: rounding never drops the last one."""


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


def spaced_grid(thick_affine: np.ndarray, thick_slices: int, spacing_mm: float) -> ThinGrid:
    """Output grid with slices `spacing_mm` apart along the slice axis (array axis 0, affine column k):
    the first on the first input slice, the last not beyond the last input slice; in-plane untouched."""
    affine = np.asarray(thick_affine, dtype=np.float64)
    validate_affine(affine)
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise GeometryError(f"the output slice spacing must be a positive number of mm, got {spacing_mm!r}")
    thick_mm = float(voxel_spacing(affine)[2])
    length = (thick_slices - 1) * thick_mm
    slices = int(np.floor(length / spacing_mm * (1 + SPACING_TOLERANCE))) + 1
    spaced = affine.copy()
    spaced[:3, 2] = affine[:3, 2] * (spacing_mm / thick_mm)
    return ThinGrid(spaced, slices)


def thick_axis(affine: np.ndarray) -> int:
    """The array axis (0 = K, 1 = J, 2 = I) of the slices: the one whose spacing is clearly the largest
    (THICK_AXIS_MIN_RATIO times each other); GeometryError when no axis is (isotropic voxels, or two
    axes equally coarse)."""
    affine = np.asarray(affine, dtype=np.float64)
    validate_affine(affine)
    by_array_axis = voxel_spacing(affine)[::-1]  # array axis 0 is affine column k
    order = np.argsort(by_array_axis)
    largest, second = by_array_axis[order[2]], by_array_axis[order[1]]
    if largest < THICK_AXIS_MIN_RATIO * second:
        sizes = " x ".join(f"{by_array_axis[a]:.3g}" for a in (2, 1, 0))
        raise GeometryError(
            f"the volume has no clear slice axis: its voxels are {sizes} mm (i x j x k), and no axis is at "
            f"least {THICK_AXIS_MIN_RATIO:g} times coarser than the others; super-resolution needs a "
            "thick-slice CT (e.g. 5 mm slices of 0.8 mm pixels)"
        )
    return int(order[2])


def slice_spacing(affine: np.ndarray) -> float:
    """The spacing in mm of the slices: along the array axis thick_axis finds (GeometryError if none)."""
    return float(voxel_spacing(affine)[2 - thick_axis(affine)])


def slice_axis_first(array: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Swap array axis `axis` with axis 0 and the matching affine columns: the same voxels at the same
    world positions. Its own inverse: calling it again with the same axis restores the layout."""
    if axis not in (0, 1, 2):
        raise ValueError(f"the slice axis must be 0, 1 or 2, got {axis!r}")
    swapped = np.asarray(affine, dtype=np.float64).copy()
    column = 2 - axis  # affine column of array axis `axis`
    swapped[:, [2, column]] = swapped[:, [column, 2]]
    return np.swapaxes(array, 0, axis), swapped


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

"""Consistency of a thin prediction with the measured thick slices (no ground truth needed).

A thick slice is a slab of r thin slices (the model card's slab profile, box by default). On the thin
grid, thick slice k sits on thin slice r k, so its slab is thin slices r k - (r - 1) / 2 ...
r k + (r - 1) / 2. Re-thickening the prediction with the same profile and comparing it with the
input, slab by slab, says how far the network strayed from what the scanner measured. The first
and last thick slices have only half a slab on the thin grid and are not compared.

Both sides are compared inside the model's intensity window (the network sees the input clipped to
it and can only answer inside it). `enforce_consistency` adds to every thin slice of a full slab
the per-pixel difference between the measured thick slice and the re-thickened prediction, which
makes each re-thickened slab equal the measured slice (the profile sums to one); for a box profile
this is the orthogonal projection onto the predictions that agree with the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..checks import odd_ratio

SLABS = ("box", "gaussian", "sparse")


def slab_profile(ratio: int, kind: str = "box") -> np.ndarray:
    """Weights of the r thin slices that make one thick slice (sum 1).

    "box": plain mean (a reconstruction with slab = spacing); "gaussian": FWHM of r slices,
    centred on the slab, as a smoother slice-sensitivity profile; "sparse": the central thin slice
    alone (thin slices sampled every r, no slab averaging: the degradation many SR papers simulate).
    """
    if kind == "box":
        return np.full(ratio, 1.0 / ratio)
    if kind == "sparse":
        return np.eye(ratio)[(ratio - 1) // 2]
    if kind == "gaussian":
        offsets = np.arange(ratio) - (ratio - 1) / 2
        sigma = ratio / 2.3548
        weights = np.exp(-0.5 * (offsets / sigma) ** 2)
        return weights / weights.sum()
    raise ValueError(f"unknown slab profile {kind!r}: use one of {', '.join(SLABS)}")


@dataclass(frozen=True)
class Consistency:
    """Mean absolute HU difference between re-thickened prediction and measured thick slices.

    `enforced_from_hu`: when the prediction was corrected with enforce_consistency before this check,
    the mean absolute difference of the uncorrected prediction (None otherwise).
    """

    mean_abs_hu: float  # over every pixel of every compared slab
    per_slab_hu: tuple[float, ...]  # one per compared thick slice, thick slices 1 ... K - 2
    worst_slab: int  # index of the thick slice with the largest mean absolute difference
    worst_abs_hu: float
    slab: str
    enforced_from_hu: float | None = None
    model_grid_mm: float | None = None

    def summary(self) -> dict:
        """JSON-ready card of the check ("enforced" and "mean_abs_hu_before_enforcing" only when enforced,
        "model_grid_mm" only when the output was resampled after the check)."""
        card = {
            "mean_abs_hu": round(self.mean_abs_hu, 3),
            "worst_slab": self.worst_slab,
            "worst_abs_hu": round(self.worst_abs_hu, 3),
            "slabs_compared": len(self.per_slab_hu),
            "slab_profile": self.slab,
        }
        if self.enforced_from_hu is not None:
            card.update(enforced=True, mean_abs_hu_before_enforcing=round(self.enforced_from_hu, 3))
        if self.model_grid_mm is not None:
            card.update(model_grid_mm=round(self.model_grid_mm, 6))
        return card

    def line(self) -> str:
        """One line for a status bar or a header field."""
        grid = ""
        if self.model_grid_mm is not None:
            grid = f" on the model's {self.model_grid_mm:.4g} mm grid (before resampling)"
        text = (
            f"consistency with the measured slices{grid}: mean |re-thickened - measured| "
            f"{self.mean_abs_hu:.1f} HU over {len(self.per_slab_hu)} slabs, worst slab {self.worst_slab} "
            f"({self.worst_abs_hu:.1f} HU)"
        )
        if self.enforced_from_hu is not None:
            text += f"; enforced (corrected from {self.enforced_from_hu:.1f} HU)"
        return text

    def after_enforcing(self, before: Consistency) -> Consistency:
        """This check, marked as made on a prediction corrected from one that scored `before`."""
        return replace(self, enforced_from_hu=before.mean_abs_hu)

    def on_model_grid(self, spacing_mm: float) -> Consistency:
        """This check, marked as made on the model's own grid (`spacing_mm` apart) of an output that was
        then resampled to another spacing: the written slices are not the ones checked."""
        return replace(self, model_grid_mm=float(spacing_mm))


def slab_of(training: dict) -> str:
    """The slab profile a model card's training section records (training config "slab"), else box."""
    config = training.get("config") if isinstance(training, dict) else None
    slab = config.get("slab", "box") if isinstance(config, dict) else "box"
    return slab if slab in SLABS else "box"


def rethicken(thin: np.ndarray, ratio: int, slab: str = "box") -> np.ndarray:
    """Thick slices 1 ... K - 2 re-made from a thin ((K - 1) r + 1, J, I) volume: (K - 2, J, I) float64."""
    profile = slab_profile(odd_ratio(ratio), slab)
    slabs = [_remade(thin, rows, profile) for _, rows in _full_slabs(np.shape(thin)[0], ratio)]
    return np.stack(slabs) if slabs else np.zeros((0, *np.shape(thin)[1:]))


def check_consistency(
    thin_hu: np.ndarray,
    thick_hu: np.ndarray,
    ratio: int,
    window: tuple[float, float],
    slab: str = "box",
) -> Consistency:
    """Compare the re-thickened thin prediction with the measured thick slices (both HU, (K, J, I)).

    Slab by slab: no float64 copy of the whole thin volume is made."""
    _check_grids(thin_hu, thick_hu, ratio)
    profile = slab_profile(odd_ratio(ratio), slab)
    per_slab = np.array(
        [
            np.abs(_remade(thin_hu, rows, profile, window) - _measured(thick_hu, k, window)).mean()
            for k, rows in _full_slabs(np.shape(thin_hu)[0], ratio)
        ]
    )
    worst = int(np.argmax(per_slab))
    return Consistency(
        mean_abs_hu=float(per_slab.mean()),  # every slab has the same number of pixels
        per_slab_hu=tuple(float(v) for v in per_slab),
        worst_slab=worst + 1,
        worst_abs_hu=float(per_slab[worst]),
        slab=slab,
    )


def enforce_consistency(
    thin_hu: np.ndarray,
    thick_hu: np.ndarray,
    ratio: int,
    window: tuple[float, float],
    slab: str = "box",
) -> np.ndarray:
    """A corrected copy (float32) of the thin prediction whose full slabs re-thicken to the measured
    slices; clipped to the window afterwards, which can leave a difference where the window binds."""
    _check_grids(thin_hu, thick_hu, ratio)
    profile = slab_profile(odd_ratio(ratio), slab)
    corrected = np.clip(np.asarray(thin_hu), *window).astype(np.float32)
    for k, rows in _full_slabs(corrected.shape[0], ratio):
        values = np.clip(np.asarray(thin_hu[rows], dtype=np.float64), *window)
        values += _measured(thick_hu, k, window) - np.tensordot(profile, values, axes=(0, 0))
        corrected[rows] = np.clip(values, *window)
    return corrected


def _full_slabs(thin_slices: int, ratio: int) -> list[tuple[int, slice]]:
    """(thick slice k, its thin rows r k - (r - 1) / 2 ... r k + (r - 1) / 2) for k = 1 ... K - 2."""
    half = (ratio - 1) // 2
    thick_count = (thin_slices - 1) // ratio + 1
    return [(k, slice(ratio * k - half, ratio * k + half + 1)) for k in range(1, thick_count - 1)]


def _remade(
    thin: np.ndarray, rows: slice, profile: np.ndarray, window: tuple[float, float] | None = None
) -> np.ndarray:
    """One re-thickened slice (float64) from thin `rows`, clipped to `window` first when given."""
    values = np.asarray(thin[rows], dtype=np.float64)
    if window is not None:
        values = np.clip(values, *window)
    return np.tensordot(profile, values, axes=(0, 0))


def _measured(thick_hu: np.ndarray, k: int, window: tuple[float, float]) -> np.ndarray:
    """Measured thick slice k (float64), clipped to the window."""
    return np.clip(np.asarray(thick_hu[k], dtype=np.float64), *window)


def _check_grids(thin_hu: np.ndarray, thick_hu: np.ndarray, ratio: int) -> None:
    """Refuse volumes that are not a thick volume and its x`ratio` thin grid with a full slab."""
    if np.ndim(thin_hu) != 3 or np.ndim(thick_hu) != 3:
        raise ValueError("the consistency check needs (K, J, I) thin and thick volumes")
    thick_shape = np.shape(thick_hu)
    expected = (thick_shape[0] - 1) * ratio + 1
    if np.shape(thin_hu) != (expected, *thick_shape[1:]):
        raise ValueError(
            f"a thin volume of shape {np.shape(thin_hu)} is not the x{ratio} grid of a thick volume of "
            f"shape {thick_shape} (expected {(expected, *thick_shape[1:])})"
        )
    if thick_shape[0] < 3:
        raise ValueError(f"{thick_shape[0]} thick slices leave no full slab to compare; need at least 3")

"""Pseudo thick/thin pairs from thin-only CT: thick slices simulated by slab averaging.

The world placement (thick slice k at the centre of thin slices r k ... r k + r - 1) and the plain
box mean come from the core (`VolumetricSRLib.phantom.simulate_thick`, `truth_slices`), and so do
the slab profiles (`VolumetricSRLib.consistency.slab_profile`, which the consistency check of a
prediction re-thickens with): one definition serves the phantom, the training crops, the evaluation
and the check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from VolumetricSRLib.consistency import slab_profile
from VolumetricSRLib.geometry import thin_grid
from VolumetricSRLib.phantom import simulate_thick, truth_slices

_NO_GEOMETRY = np.eye(4)


def simulate_thick_slices(thin: np.ndarray, ratio: int, slab: str = "box") -> np.ndarray:
    """Thick slice k = profile-weighted mean of thin slices r k ... r k + r - 1 (axis 0), float32."""
    if slab == "box":
        return simulate_thick(thin, _NO_GEOMETRY, ratio)[0]
    profile = slab_profile(ratio, slab)
    thick = simulate_thick(thin, _NO_GEOMETRY, ratio)[0]  # validates shape and ratio
    slabs = np.asarray(thin, dtype=np.float32)[: thick.shape[0] * ratio]
    slabs = slabs.reshape(thick.shape[0], ratio, *thick.shape[1:])
    return np.tensordot(profile.astype(np.float32), slabs, axes=([0], [1])).astype(np.float32)


def first_matching_thin_slice(ratio: int) -> int:
    """Index of the thin slice the first simulated thick slice lies on (odd ratios only)."""
    return truth_slices(1, ratio).start


@dataclass
class PseudoPair:
    """A simulated thick scan and the thin truth on its thin grid (all HU, (K, J, I))."""

    thick: np.ndarray
    thick_affine: np.ndarray
    truth: np.ndarray
    truth_affine: np.ndarray


def make_pseudo_pair(thin: np.ndarray, thin_affine: np.ndarray, ratio: int, slab: str = "box") -> PseudoPair:
    """Simulate the thick scan of a thin volume and cut the thin slices that lie on its thin grid."""
    thick, thick_affine = simulate_thick(thin, thin_affine, ratio)
    if slab != "box":
        thick = simulate_thick_slices(thin, ratio, slab)
    truth = np.asarray(thin, dtype=np.float32)[truth_slices(thick.shape[0], ratio)]
    return PseudoPair(thick, thick_affine, truth, thin_grid(thick_affine, thick.shape[0], ratio).affine)

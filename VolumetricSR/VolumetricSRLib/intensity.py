"""Intensity mapping between Hounsfield units and the network's [0, 1] scale.

Whole volumes are converted slab by slab: no temporary larger than SLAB_SLICES slices.
"""

from __future__ import annotations

import numpy as np

HU_MIN = -1024.0
HU_MAX = 2048.0
SLAB_SLICES = 16


def hu_to_unit(hu: np.ndarray, window: tuple[float, float] = (HU_MIN, HU_MAX)) -> np.ndarray:
    """Clip HU to the window and scale linearly to [0, 1] (a new float32 array)."""
    lo, hi = window
    unit = np.array(hu, dtype=np.float32)  # the one copy; the rest happens in place
    np.clip(unit, lo, hi, out=unit)
    unit -= lo
    unit /= hi - lo
    return unit


def unit_to_hu(unit: np.ndarray, window: tuple[float, float] = (HU_MIN, HU_MAX)) -> np.ndarray:
    """Clamp to [0, 1] and map back to HU (float32)."""
    lo, hi = window
    return (np.clip(unit, 0.0, 1.0) * (hi - lo) + lo).astype(np.float32)


def to_int16_hu(hu: np.ndarray) -> np.ndarray:
    """Round HU to the nearest integer and store as int16, slab by slab along the first axis."""
    hu = np.asarray(hu)
    if hu.ndim == 0:
        return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    out = np.empty(hu.shape, dtype=np.int16)
    for z in range(0, hu.shape[0], SLAB_SLICES):
        out[z : z + SLAB_SLICES] = np.clip(np.rint(hu[z : z + SLAB_SLICES]), -32768, 32767)
    return out

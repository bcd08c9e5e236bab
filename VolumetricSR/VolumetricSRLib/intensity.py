"""Intensity mapping between Hounsfield units and the network's [0, 1] scale."""

from __future__ import annotations

import numpy as np

HU_MIN = -1024.0
HU_MAX = 2048.0


def hu_to_unit(hu: np.ndarray, window: tuple[float, float] = (HU_MIN, HU_MAX)) -> np.ndarray:
    """Clip HU to the window and scale linearly to [0, 1] (float32)."""
    lo, hi = window
    return ((np.clip(hu.astype(np.float32, copy=False), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def unit_to_hu(unit: np.ndarray, window: tuple[float, float] = (HU_MIN, HU_MAX)) -> np.ndarray:
    """Clamp to [0, 1] and map back to HU (float32)."""
    lo, hi = window
    return (np.clip(unit, 0.0, 1.0) * (hi - lo) + lo).astype(np.float32)


def to_int16_hu(hu: np.ndarray) -> np.ndarray:
    """Round HU to the nearest integer and store as int16."""
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)

"""The volume type every reader returns, the error every reader and writer raises, what a writer
stores of a consistency check, and the words that label a volume synthetic: shared by every format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..geometry import voxel_spacing

if TYPE_CHECKING:
    from .dicom_source import DicomSource

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS (its own inverse)
SYNTHETIC_LABEL = "SYNTHETIC thin CT (VolumetricSR super-resolution)"


class ConsistencyRecord(Protocol):
    """What a writer stores of a check of a prediction against its input (inference.consistency)."""

    mean_abs_hu: float

    def line(self) -> str: ...

    def summary(self) -> dict: ...


class VolumeFileError(ValueError):
    """A volume file cannot be read or written; the message says why and what to do."""


@dataclass
class Volume:
    """A 3D volume: `array` (K, J, I) in the stored dtype, `affine` mapping (i, j, k, 1) to RAS (mm).

    `dicom` tells which DICOM series a volume read from a DICOM folder came from (None otherwise).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    dicom: DicomSource | None = None

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing along i, j, k in mm (zero where the file gives none)."""
        return voxel_spacing(self.affine)


def synthetic_description(synthetic: Mapping[str, str]) -> str:
    """One line that says a volume is synthetic and which model made it (80 characters at most)."""
    model = synthetic.get("model", "")
    return f"{SYNTHETIC_LABEL}, model {model}"[:80] if model else SYNTHETIC_LABEL


def synthetic_series_description(model: str) -> str:
    """SeriesDescription of a synthetic DICOM series: 'SYNTHETIC thin CT VolumetricSR <model>' (<= 64)."""
    return f"SYNTHETIC thin CT VolumetricSR {model}".strip()[:64]

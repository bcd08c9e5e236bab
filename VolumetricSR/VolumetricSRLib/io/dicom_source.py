"""The DICOM series a volume was read from: what a derived series copies and refers to.

Torch- and pydicom-free at import (pydicom's Dataset is only a type here), so that the volume type can
name it and Slicer's GUI process can load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

POSITION_TOLERANCE_MM = 0.01  # as Slicer's DICOM scalar volume loader


@dataclass(frozen=True)
class DicomSource:
    """The DICOM series a volume was read from: what a derived series copies."""

    folder: Path
    series_uid: str
    header: Dataset  # the first slice's header (no pixel data)
    # the source numbers its slices against the volume's k axis (GE and Siemens number head to feet):
    # a derived series numbers its own the same way, so that viewers sorting by number scroll alike
    numbers_descend: bool = False
    # each slice in the volume's order: (SOPClassUID, SOPInstanceUID) and its depth along the slice
    # normal (LPS mm), so that each derived slice can name the slices it was made from
    slices: tuple[tuple[str, str], ...] = ()
    depths: tuple[float, ...] = ()

    def sources_of(self, depth: float) -> list[tuple[str, str]]:
        """The source slices a derived slice at `depth` (mm along the normal) was made from: the one it
        lies on, else the two it lies between (the nearest one outside the series)."""
        if not self.depths:
            return []
        depths = np.asarray(self.depths)
        on = np.flatnonzero(np.abs(depths - depth) <= POSITION_TOLERANCE_MM)
        if on.size:
            return [self.slices[int(on[0])]]
        above = int(np.searchsorted(depths, depth))
        indices = [i for i in (above - 1, above) if 0 <= i < len(depths)]
        return [self.slices[i] for i in indices]

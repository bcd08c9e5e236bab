"""The DICOM entry of the format table: a series in a folder, read and written by dicom_io.

dicom_io (and pydicom with it) is imported on first use, so that Slicer's GUI process, which reads
and writes NRRD only, does not load it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .formats import VolumeFormat, WriteOptions, register
from .volume import Volume


def read_series(folder: Path, series: str | None = None) -> Volume:
    """The CT series of a folder (dicom_io.read_dicom_series)."""
    from .dicom_io import read_dicom_series

    return read_dicom_series(folder, series)


def write_series(folder: Path, array: np.ndarray, affine: np.ndarray, options: WriteOptions) -> Path:
    """A derived CT series (dicom_io.write_dicom_series), with the consistency line as ImageComments."""
    from .dicom_io import write_dicom_series

    comments = options.consistency.line() if options.consistency is not None else None
    return write_dicom_series(
        folder,
        array,
        affine,
        options.synthetic or {},
        options.source,
        options.overwrite,
        comments,
        options.burn_in_marker,
    )


def check_output(input_path: Path | None, output: Path, overwrite: bool) -> Path:
    """A folder a DICOM series may be written to (dicom_io.check_output_folder)."""
    from .dicom_io import check_output_folder

    return check_output_folder(input_path, output, overwrite)


register(VolumeFormat("dicom", (), read_series, write_series, check_output, burns_in_marker=True))

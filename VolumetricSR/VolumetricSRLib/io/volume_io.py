"""Read and write CT volumes as (K, J, I) arrays + RAS affines, whatever their format: NIfTI, NRRD and
MetaImage files (image_files) and DICOM series folders (dicom_format), dispatched through the format
table (formats). Importing the format modules registers them.

nibabel, SimpleITK and pydicom are imported on first use: Slicer's GUI process imports this module
and must stay light.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import dicom_format as dicom_format
from . import image_files as image_files
from .dicom_source import DicomSource
from .formats import TABLE, VolumeFormat, WriteOptions
from .volume import LPS_TO_RAS as LPS_TO_RAS
from .volume import SYNTHETIC_LABEL as SYNTHETIC_LABEL
from .volume import ConsistencyRecord
from .volume import Volume as Volume
from .volume import VolumeFileError as VolumeFileError
from .volume import synthetic_description as synthetic_description
from .volume import synthetic_series_description as synthetic_series_description


def suffixes(writable: bool = False) -> tuple[str, ...]:
    """The file name endings of the registered formats (that can be written), in the table's order."""
    return tuple(s for entry in TABLE.values() if entry.write or not writable for s in entry.suffixes)


SUPPORTED = suffixes()
WRITABLE = suffixes(writable=True)
# --format: by the output's name, or a folder format by its name
FORMATS = ("auto", *(entry.name for entry in TABLE.values() if entry.folder))


def volume_stem(path: str | Path) -> str:
    """A volume's name: the file name without its volume suffix (.nii.gz, .nrrd, ...), or the name of
    a DICOM folder (a name that is only a suffix stays whole)."""
    name = Path(path).name
    for suffix in sorted(suffixes(), key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def file_format(path: str | Path) -> VolumeFormat:
    """The format of a volume file, by its name's ending; refuses anything else."""
    name = Path(path).name.lower()
    for suffix in sorted(suffixes(), key=len, reverse=True):
        if name.endswith(suffix):
            return next(entry for entry in TABLE.values() if suffix in entry.suffixes)
    raise VolumeFileError(
        f"{Path(path).name}: unsupported file type; use one of {', '.join(suffixes())} or a folder "
        "holding a DICOM series"
    )


def file_kind(path: str | Path) -> str:
    """'nifti', 'nrrd' or 'metaimage' by extension; refuses anything else."""
    return file_format(path).name


def folder_format() -> VolumeFormat:
    """The format of series folders (DICOM)."""
    return next(entry for entry in TABLE.values() if entry.folder)


def output_format(path: str | Path, requested: str = "auto") -> str:
    """'nifti', 'nrrd' or 'dicom' for an output: DICOM when asked for, or when the path is a folder
    (an existing one, or text ending in '/') without a volume file extension."""
    folder = folder_format().name
    if requested not in ("auto", folder):
        raise VolumeFileError(f"unknown output format {requested!r}; use one of auto, {folder}")
    text = str(path)
    if requested != "auto":
        return requested
    if not text.lower().endswith(suffixes()) and (Path(text).is_dir() or text.endswith(("/", os.sep))):
        return folder
    if not text.lower().endswith(suffixes(writable=True)):
        endings = ", ".join(suffixes(writable=True))
        raise VolumeFileError(
            f"{Path(text).name}: unsupported file type for an output; give a file name ending in {endings}, "
            "or a folder (a path ending in '/', or --format dicom) for a DICOM series"
        )
    return file_kind(text)


def output_ending(kind: str) -> str:
    """The ending of an output of format `kind` in a run over many studies ("" for a folder)."""
    return TABLE[kind].output_ending


def read_volume(path: str | Path, series: str | None = None) -> Volume:
    """Read a 3D volume file, or the CT series of a DICOM folder (`series`: its SeriesInstanceUID,
    needed when the folder holds several); refuses missing, unknown, corrupt, 2D and multi-volume input."""
    path = Path(path)
    if not path.exists():
        raise VolumeFileError(f"file not found: {path}")
    if path.is_dir():
        return folder_format().read(path, series)
    if series is not None:
        raise VolumeFileError(
            f"a series ({series}) was chosen, but {path.name} is a file, not a DICOM folder"
        )
    return file_format(path).read(path, None)


def read_geometry(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (K, J, I) and voxel-to-world affine of a volume, without its voxels where the format can
    (NIfTI: its header alone); other formats are read whole. Errors as read_volume's."""
    path = Path(path)
    entry = file_format(path) if path.is_file() else None
    if entry is None or entry.read_geometry is None:
        volume = read_volume(path)
        return volume.array.shape, volume.affine
    return entry.read_geometry(path)


def check_output_path(
    input_path: str | Path | None, output_path: str | Path, overwrite: bool = False, out_format: str = "auto"
) -> Path:
    """Refuse an output that is the input, exists (unless overwrite), has an unknown type or no folder.

    A folder format (DICOM) has its own check (dicom_io.check_output_folder).
    """
    entry = TABLE[output_format(output_path, out_format)]
    source = Path(input_path) if input_path is not None else None
    if entry.check_output is not None:
        return entry.check_output(source, Path(output_path), overwrite)
    output = Path(output_path)
    if source is not None and _same_file(source, output):
        raise VolumeFileError(
            f"the output {output} is the input file; choose another output path "
            "(the input is never overwritten)"
        )
    if output.is_dir():
        raise VolumeFileError(
            f"the output {output} is a folder; give a file name ending in .nii.gz or .nrrd "
            "(or --format dicom to write a DICOM series into a folder)"
        )
    if output.exists() and not overwrite:
        raise VolumeFileError(
            f"{output} already exists; choose another name or ask to overwrite it (--overwrite)"
        )
    if not output.parent.is_dir():
        raise VolumeFileError(f"the output folder {output.parent} does not exist; create it first")
    return output


def check_room(output: str | Path, expected_bytes: int) -> None:
    """Refuse, before any work, an output that cannot be written: its folder (the nearest existing one)
    not writable (permissions, a read-only file system) or with less free space than `expected_bytes`."""
    folder = Path(output).absolute()
    while not folder.is_dir():
        folder = folder.parent
    try:
        handle, probe = tempfile.mkstemp(prefix=".volumetricsr-probe-", dir=folder)
    except OSError as error:
        raise VolumeFileError(
            f"cannot write into {folder} ({error.strerror or error}); choose an output in a folder you can "
            "write to"
        ) from None
    os.close(handle)
    os.unlink(probe)
    free = shutil.disk_usage(folder).free
    if free < expected_bytes:
        raise VolumeFileError(
            f"{folder} has {free / 2**20:.2f} MiB free, but the output needs about "
            f"{expected_bytes / 2**20:.2f} MiB; free some space or choose an output on another disk"
        )


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def write_volume(
    path: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    overwrite: bool = False,
    input_path: str | Path | None = None,
    compress: bool = True,
    synthetic: Mapping[str, str] | None = None,
    out_format: str = "auto",
    dicom_source: DicomSource | None = None,
    consistency: ConsistencyRecord | None = None,
    burn_in_marker: bool = False,
) -> Path:
    """Write (K, J, I) voxels with a RAS affine as NIfTI, NRRD (by extension) or a DICOM series
    (see output_format), atomically. `burn_in_marker`: DICOM only, see write_dicom_series.

    `compress=False` writes NRRD data raw instead of gzip (NIfTI: the extension decides).
    `synthetic` (e.g. {"model": id, "model_sha256": ..., "source": ..., "source_series_uid": ...})
    labels a volume made by a network: NIfTI `descrip` starts with SYNTHETIC_LABEL and `intent_name`
    is "SYNTHETIC"; NRRD gets `VolumetricSR_synthetic:=true` and one `VolumetricSR_<key>:=<value>`
    line per entry; DICOM gets a derived series (dicom_io.write_dicom_series, which copies patient
    and study from `dicom_source`). `consistency` (a check of the prediction against its input) is
    stored beside the label: NRRD `VolumetricSR_consistency:=<line>` and one
    `VolumetricSR_consistency_<key>:=<value>` per summary entry; NIfTI a header extension (code 6,
    comment) holding {"VolumetricSR_consistency": summary, "line": line} as JSON and `aux_file`
    "consistency <mean> HU"; DICOM the line as ImageComments. A file appears complete or not at
    all: it is written to a hidden temporary file in the same folder, then renamed. NIfTI gets sform
    and qform code 1 (scanner); NRRD is written in LPS.
    """
    kind = output_format(path, out_format)
    entry = TABLE[kind]
    path = check_output_path(input_path, path, overwrite, out_format)
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim != 3:
        raise VolumeFileError(f"only 3D volumes are written, got an array of shape {array.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise VolumeFileError("the voxel-to-world matrix must be a finite 4 x 4 matrix")
    if burn_in_marker and not entry.burns_in_marker:
        raise VolumeFileError(
            f"a burned-in SYNTHETIC marker (--burn-in-marker) is for DICOM output; {path.name} is {kind}, "
            "whose header already says synthetic: leave the option out, or write DICOM"
        )
    options = WriteOptions(
        overwrite,
        Path(input_path) if input_path else None,
        compress,
        synthetic,
        dicom_source,
        consistency,
        burn_in_marker,
    )
    try:
        return entry.write(path, array, affine, options)  # output_format chose a format with a writer
    except OSError as exc:
        raise VolumeFileError(f"cannot write {path}: {exc.strerror or exc}") from exc

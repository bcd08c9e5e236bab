"""Read and write CT volumes as (K, J, I) arrays + RAS affines: NIfTI (.nii, .nii.gz, with nibabel),
NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd) with SimpleITK, and DICOM series folders (dicom_io).

SimpleITK, nibabel and the DICOM module are imported on first use: Slicer's GUI process imports this
module and must stay light. The volume type, its error and the synthetic labels live in `volume`,
which the DICOM module imports too: no import cycle.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import atomic_path
from .volume import LPS_TO_RAS as LPS_TO_RAS
from .volume import SYNTHETIC_LABEL as SYNTHETIC_LABEL
from .volume import Volume as Volume
from .volume import VolumeFileError as VolumeFileError
from .volume import synthetic_description as synthetic_description
from .volume import synthetic_series_description as synthetic_series_description

if TYPE_CHECKING:
    from .consistency import Consistency
    from .dicom_io import DicomSource

SUPPORTED = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
WRITABLE = (".nii", ".nii.gz", ".nrrd")
FORMATS = ("auto", "dicom")
# numpy types SimpleITK stores as scalar voxels
_ITK_DTYPES = frozenset(
    np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)
) | {np.dtype(np.float32), np.dtype(np.float64)}

NIFTI_COMMENT_CODE = 6  # NIfTI-1 header extension code "comment": free text (here one JSON object)


def volume_stem(path: str | Path) -> str:
    """A volume's name: the file name without its volume suffix (.nii.gz, .nrrd, ...), or the name of
    a DICOM folder (a name that is only a suffix stays whole)."""
    name = Path(path).name
    for suffix in sorted(SUPPORTED, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def file_kind(path: str | Path) -> str:
    """'nifti', 'nrrd' or 'metaimage' by extension; refuses anything else."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if name.endswith((".mha", ".mhd")):
        return "metaimage"
    raise VolumeFileError(
        f"{Path(path).name}: unsupported file type; use one of {', '.join(SUPPORTED)} or a folder "
        "holding a DICOM series"
    )


def output_format(path: str | Path, requested: str = "auto") -> str:
    """'nifti', 'nrrd' or 'dicom' for an output: DICOM when asked for, or when the path is a folder
    (an existing one, or text ending in '/') without a volume file extension."""
    if requested not in FORMATS:
        raise VolumeFileError(f"unknown output format {requested!r}; use one of {', '.join(FORMATS)}")
    text = str(path)
    if requested == "dicom":
        return "dicom"
    if not text.lower().endswith(SUPPORTED) and (Path(text).is_dir() or text.endswith(("/", os.sep))):
        return "dicom"
    if not text.lower().endswith(WRITABLE):
        raise VolumeFileError(
            f"{Path(text).name}: unsupported file type for an output; give a file name ending in "
            f"{', '.join(WRITABLE)}, or a folder (a path ending in '/', or --format dicom) for a DICOM series"
        )
    return file_kind(text)


def read_volume(path: str | Path, series: str | None = None) -> Volume:
    """Read a 3D volume file, or the CT series of a DICOM folder (`series`: its SeriesInstanceUID,
    needed when the folder holds several); refuses missing, unknown, corrupt, 2D and multi-volume input."""
    path = Path(path)
    if not path.exists():
        raise VolumeFileError(f"file not found: {path}")
    if path.is_dir():
        from .dicom_io import read_dicom_series

        return read_dicom_series(path, series)
    if series is not None:
        raise VolumeFileError(
            f"a series ({series}) was chosen, but {path.name} is a file, not a DICOM folder"
        )
    kind = file_kind(path)
    try:
        array, affine = _read_nifti(path) if kind == "nifti" else _read_itk(path, kind)
    except VolumeFileError:
        raise
    except Exception as exc:  # nibabel, SimpleITK, gzip and numpy raise many types for a damaged file
        raise _unreadable(path, exc) from exc
    if 1 in array.shape:
        raise _flat_image_error(path, array.shape[::-1])
    return Volume(array=array, affine=affine, path=path)


def read_geometry(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (K, J, I) and voxel-to-world affine of a volume, without its voxels for NIfTI (its header
    alone is read); other formats are read whole. Errors as read_volume's."""
    path = Path(path)
    if not path.is_file() or file_kind(path) != "nifti":
        volume = read_volume(path)
        return volume.array.shape, volume.affine
    try:
        image = _nibabel().load(path)
    except Exception as exc:  # nibabel raises many types for a damaged file
        raise _unreadable(path, exc) from exc
    shape = image.shape
    if len(shape) < 3 or int(np.prod(shape[3:])) > 1 or 1 in shape[:3]:
        raise VolumeFileError(f"{path.name} is not a single 3D volume (shape {shape})")
    return (shape[2], shape[1], shape[0]), np.asarray(image.affine, dtype=np.float64)


def _unreadable(path: Path, exc: Exception) -> VolumeFileError:
    return VolumeFileError(
        f"cannot read {path.name}: the file is unreadable or corrupt ({_reason(exc)}); "
        "check the file, or save it again (e.g. from 3D Slicer)"
    )


def _reason(exc: Exception) -> str:
    """The useful line of an error: for ITK's multi-line reports, its last line without the source prefix."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    if last.startswith("[nrrd]"):
        last = last.split(":", 1)[-1].strip()
    return last.removeprefix("sitk::ERROR: ").removeprefix("ITK ERROR: ")


def _flat_image_error(path: Path, sizes: tuple[int, ...]) -> VolumeFileError:
    return VolumeFileError(
        f"{path.name} is a 2D image ({' x '.join(map(str, sizes))} voxels); super-resolution needs a 3D "
        "volume with several slices"
    )


def _nibabel():
    """nibabel, imported on first use: Slicer's GUI process writes and reads only NRRD."""
    import nibabel

    return nibabel


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = _nibabel().load(path)
    shape = image.shape
    if len(shape) < 3:
        raise _flat_image_error(path, shape)
    volumes = int(np.prod(shape[3:]))
    if volumes > 1:
        raise VolumeFileError(
            f"{path.name} holds {volumes} volumes ({' x '.join(map(str, shape))}); give a single 3D volume"
        )
    data = np.asanyarray(image.dataobj).reshape(shape[:3])
    return np.ascontiguousarray(data.transpose(2, 1, 0)), np.array(image.affine, dtype=np.float64)


def _read_itk(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """NRRD or MetaImage with SimpleITK: ITK's LPS geometry turned into a RAS affine."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetDimension() < 3:
        raise _flat_image_error(path, reader.GetSize())
    if reader.GetDimension() > 3:
        raise VolumeFileError(f"{path.name} has {reader.GetDimension()} spatial axes; a 3D volume is needed")
    if reader.GetNumberOfComponents() > 1:
        raise VolumeFileError(
            f"{path.name} holds {reader.GetNumberOfComponents()} volumes or components per voxel; give a "
            "single 3D volume"
        )
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image)
    affine = np.eye(4)
    if kind == "nrrd" and not _nrrd_has_spacing(path):
        affine[:3, :3] = 0.0  # no geometry: reported as missing spacing by the geometry checks
        return array, affine
    directions = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine[:3, :3] = LPS_TO_RAS @ directions @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=np.float64)
    return array, affine


def _nrrd_has_spacing(path: Path) -> bool:
    """Whether a NRRD header gives 'space directions' or 'spacings' (without them ITK assumes 1 mm)."""
    with open(path, "rb") as stream:
        header = stream.read(1 << 16).replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    fields = {line.split(b":", 1)[0].strip().lower() for line in header.split(b"\n")[1:]}
    return bool(fields & {b"space directions", b"spacings"})


def check_output_path(
    input_path: str | Path | None, output_path: str | Path, overwrite: bool = False, out_format: str = "auto"
) -> Path:
    """Refuse an output that is the input, exists (unless overwrite), has an unknown type or no folder.

    A DICOM output (see output_format) is a folder: dicom_io.check_output_folder decides.
    """
    if output_format(output_path, out_format) == "dicom":
        from .dicom_io import check_output_folder

        return check_output_folder(input_path, output_path, overwrite)
    output = Path(output_path)
    if input_path is not None and _same_file(Path(input_path), output):
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
    consistency: Consistency | None = None,
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
    path = check_output_path(input_path, path, overwrite, out_format)
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim != 3:
        raise VolumeFileError(f"only 3D volumes are written, got an array of shape {array.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise VolumeFileError("the voxel-to-world matrix must be a finite 4 x 4 matrix")
    if kind == "dicom":
        comments = consistency.line() if consistency is not None else None
        from .dicom_io import write_dicom_series

        return write_dicom_series(
            path, array, affine, synthetic or {}, dicom_source, overwrite, comments, burn_in_marker
        )
    if burn_in_marker:
        raise VolumeFileError(
            f"a burned-in SYNTHETIC marker (--burn-in-marker) is for DICOM output; {path.name} is {kind}, "
            "whose header already says synthetic: leave the option out, or write DICOM"
        )
    labels = _nrrd_labels(synthetic, consistency) if kind == "nrrd" else None
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    try:
        with atomic_path(path, suffix) as temporary:
            if kind == "nifti":
                _write_nifti(temporary, array, affine, path.name, synthetic, consistency)
            else:
                _write_nrrd(temporary, array, affine, path.name, compress, labels)
    except OSError as exc:
        raise VolumeFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def _consistency_fields(consistency: Consistency) -> dict[str, str]:
    """NRRD key/value fields of a consistency check: its line and one field per summary entry."""
    fields = {"VolumetricSR_consistency": consistency.line()}
    fields.update(
        {f"VolumetricSR_consistency_{key}": str(value) for key, value in consistency.summary().items()}
    )
    return fields


def _nrrd_labels(
    synthetic: Mapping[str, str] | None, consistency: Consistency | None
) -> dict[str, str] | None:
    if synthetic is None and consistency is None:
        return None
    labels: dict[str, str] = {}
    if synthetic is not None:
        labels = {
            "VolumetricSR_synthetic": "true",
            "VolumetricSR_description": synthetic_description(synthetic),
        }
        labels.update({f"VolumetricSR_{key}": str(value) for key, value in synthetic.items()})
    if consistency is not None:
        labels.update(_consistency_fields(consistency))
    for key, value in labels.items():
        if ":=" in key or any(c in f"{key}{value}" for c in "\r\n"):
            raise VolumeFileError(
                f"NRRD key/value {key!r}: {value!r} must be one line and the key without ':='; "
                "remove the line breaks from the label"
            )
    return labels


def _write_nrrd(
    path: Path,
    array: np.ndarray,
    affine: np.ndarray,
    name: str,
    compress: bool,
    labels: Mapping[str, str] | None,
) -> None:
    """NRRD with SimpleITK in LPS: spacing and direction from the affine's columns."""
    import SimpleITK as sitk

    dtype = np.dtype(array.dtype).newbyteorder("=")
    if dtype not in _ITK_DTYPES:
        raise VolumeFileError(
            f"cannot store {array.dtype} voxels in {name}; convert them to int16 or float32"
        )
    linear = LPS_TO_RAS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise VolumeFileError(f"cannot write {name}: an axis of the voxel-to-world matrix has zero length")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=dtype))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (linear / spacing).ravel()])
    image.SetOrigin([float(v) for v in LPS_TO_RAS @ affine[:3, 3]])
    for key, value in (labels or {}).items():
        image.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    try:
        writer.Execute(image)
    except RuntimeError as exc:  # ITK reports a failed write (full disk, no permission) this way
        raise VolumeFileError(f"cannot write {name}: {_reason(exc)}") from exc


def _write_nifti(
    path: Path,
    array: np.ndarray,
    affine: np.ndarray,
    name: str,
    synthetic: Mapping[str, str] | None,
    consistency: Consistency | None,
) -> None:
    nib = _nibabel()
    try:
        image = nib.Nifti1Image(array.transpose(2, 1, 0), affine)
        if synthetic is not None:
            image.header["descrip"] = synthetic_description(synthetic).encode("ascii", "replace")
            image.header["intent_name"] = b"SYNTHETIC"
        if consistency is not None:
            record = {"VolumetricSR_consistency": consistency.summary(), "line": consistency.line()}
            content = json.dumps(record).encode("utf-8")
            image.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_COMMENT_CODE, content))
            image.header["aux_file"] = f"consistency {consistency.mean_abs_hu:.1f} HU"[:23].encode("ascii")
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        image.header.set_data_dtype(array.dtype)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, path)
    except nib.spatialimages.HeaderDataError as exc:
        raise VolumeFileError(f"cannot store {array.dtype} voxels in {name}: {exc}") from exc

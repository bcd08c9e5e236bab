"""NIfTI (.nii, .nii.gz; nibabel), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd; read only) with
SimpleITK: readers, writers and their entries in the format table.

nibabel and SimpleITK are imported on first use: Slicer's GUI process imports this module (through
volume_io) and must stay light.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from .formats import VolumeFormat, WriteOptions, register
from .volume import LPS_TO_RAS, ConsistencyRecord, Volume, VolumeFileError, synthetic_description

# numpy types SimpleITK stores as scalar voxels
_ITK_DTYPES = frozenset(
    np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)
) | {np.dtype(np.float32), np.dtype(np.float64)}

NIFTI_COMMENT_CODE = 6  # NIfTI-1 header extension code "comment": free text (here one JSON object)


def read_nifti(path: Path, series: str | None = None) -> Volume:
    """A NIfTI file's single 3D volume (`series` is for folder formats)."""
    return _read_checked(path, _read_nifti)


def read_nrrd(path: Path, series: str | None = None) -> Volume:
    """A NRRD file's single 3D volume, without geometry when the header gives no spacing."""
    return _read_checked(path, lambda p: _read_itk(p, "nrrd"))


def read_metaimage(path: Path, series: str | None = None) -> Volume:
    """A MetaImage file's single 3D volume."""
    return _read_checked(path, lambda p: _read_itk(p, "metaimage"))


def _read_checked(path: Path, read: Callable[[Path], tuple[np.ndarray, np.ndarray]]) -> Volume:
    """`read`'s voxels and affine as a Volume; a damaged, 2D or multi-volume file is refused by name."""
    try:
        array, affine = read(path)
    except VolumeFileError:
        raise
    except Exception as exc:  # nibabel, SimpleITK, gzip and numpy raise many types for a damaged file
        raise _unreadable(path, exc) from exc
    if 1 in array.shape:
        raise _flat_image_error(path, array.shape[::-1])
    return Volume(array=array, affine=affine, path=path)


def read_nifti_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (K, J, I) and affine of a NIfTI file from its header alone."""
    try:
        image = _nibabel().load(path)
    except Exception as exc:  # nibabel raises many types for a damaged file
        raise _unreadable(path, exc) from exc
    shape = image.shape
    if len(shape) < 3 or int(np.prod(shape[3:])) > 1 or 1 in shape[:3]:
        raise VolumeFileError(f"{path.name} is not a single 3D volume (shape {shape})")
    return (shape[2], shape[1], shape[0]), np.asarray(image.affine, dtype=np.float64)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, options: WriteOptions) -> Path:
    """NIfTI with sform and qform code 1 (scanner); the labels in descrip, intent_name and an extension."""
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix) as temporary:
        _write_nifti(temporary, array, affine, path.name, options.synthetic, options.consistency)
    return path


def write_nrrd(path: Path, array: np.ndarray, affine: np.ndarray, options: WriteOptions) -> Path:
    """NRRD in LPS, gzip unless `options.compress` is off; the labels as key/value fields."""
    labels = _nrrd_labels(options.synthetic, options.consistency)
    with atomic_path(path, path.suffix) as temporary:
        _write_nrrd(temporary, array, affine, path.name, options.compress, labels)
    return path


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


def _consistency_fields(consistency: ConsistencyRecord) -> dict[str, str]:
    """NRRD key/value fields of a consistency check: its line and one field per summary entry."""
    fields = {"VolumetricSR_consistency": consistency.line()}
    fields.update(
        {f"VolumetricSR_consistency_{key}": str(value) for key, value in consistency.summary().items()}
    )
    return fields


def _nrrd_labels(
    synthetic: Mapping[str, str] | None, consistency: ConsistencyRecord | None
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
    consistency: ConsistencyRecord | None,
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


register(
    VolumeFormat(
        "nifti",
        (".nii", ".nii.gz"),
        read_nifti,
        write_nifti,
        read_geometry=read_nifti_geometry,
        output_ending=".nii.gz",
    )
)
register(VolumeFormat("nrrd", (".nrrd", ".nhdr"), read_nrrd, write_nrrd, output_ending=".nrrd"))
register(VolumeFormat("metaimage", (".mha", ".mhd"), read_metaimage))

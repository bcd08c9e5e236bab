"""Read and write CT volumes (NIfTI .nii / .nii.gz and NRRD .nrrd) as (K, J, I) arrays + RAS affines."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .geometry import voxel_spacing
from .nrrd import NrrdError, NrrdImage, read_nrrd, write_nrrd

SUPPORTED = (".nii", ".nii.gz", ".nrrd")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


SYNTHETIC_LABEL = "SYNTHETIC thin CT (VolumetricSR super-resolution)"


class VolumeFileError(ValueError):
    """A volume file cannot be read or written; the message says why and what to do."""


@dataclass
class Volume:
    """A 3D volume: `array` (K, J, I) in the stored dtype, `affine` mapping (i, j, k, 1) to RAS (mm)."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing along i, j, k in mm (zero where the file gives none)."""
        return voxel_spacing(self.affine)


def file_kind(path: str | Path) -> str:
    """'nifti' or 'nrrd' by extension; refuses anything else."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".nrrd"):
        return "nrrd"
    if name.endswith(".nhdr"):
        raise VolumeFileError(
            f"{Path(path).name}: detached NRRD (.nhdr + data file) is not supported; "
            "save it as a single .nrrd"
        )
    raise VolumeFileError(
        f"{Path(path).name}: unsupported file type; use one of {', '.join(SUPPORTED)} "
        "(convert DICOM or other formats first, e.g. in 3D Slicer)"
    )


def read_volume(path: str | Path) -> Volume:
    """Read a 3D volume; refuses missing, unknown, corrupt, 2D and multi-volume files."""
    path = Path(path)
    if not path.exists():
        raise VolumeFileError(f"file not found: {path}")
    if path.is_dir():
        raise VolumeFileError(f"{path} is a folder; give a {', '.join(SUPPORTED)} file")
    kind = file_kind(path)
    try:
        array, affine = _read_nifti(path) if kind == "nifti" else _read_nrrd(path)
    except VolumeFileError:
        raise
    except Exception as exc:  # nibabel, gzip and numpy raise many types for a damaged file
        raise VolumeFileError(f"cannot read {path.name}: the file is unreadable or corrupt ({exc})") from exc
    if 1 in array.shape:
        raise _flat_image_error(path, array.shape[::-1])
    return Volume(array=array, affine=affine, path=path)


def read_geometry(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (K, J, I) and voxel-to-world affine of a volume file, without its voxels for NIfTI
    (its header alone is read); an NRRD file is read whole. Errors as read_volume's."""
    path = Path(path)
    if file_kind(path) != "nifti" or not path.is_file():
        volume = read_volume(path)
        return volume.array.shape, volume.affine
    try:
        image = _nibabel().load(path)
    except Exception as exc:  # nibabel raises many types for a damaged file
        raise VolumeFileError(f"cannot read {path.name}: the file is unreadable or corrupt ({exc})") from exc
    shape = image.shape
    if len(shape) < 3 or int(np.prod(shape[3:])) > 1 or 1 in shape[:3]:
        raise VolumeFileError(f"{path.name} is not a single 3D volume (shape {shape})")
    return (shape[2], shape[1], shape[0]), np.asarray(image.affine, dtype=np.float64)


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


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        image = read_nrrd(path)
    except NrrdError as exc:
        raise VolumeFileError(str(exc)) from exc
    sizes = image.array.shape[::-1]  # NRRD axis order
    spatial = _spatial_axes(image, path)
    if len(spatial) < 3:
        raise _flat_image_error(path, tuple(sizes[axis] for axis in spatial))
    if len(spatial) > 3:
        raise VolumeFileError(f"{path.name} has {len(spatial)} spatial axes; a 3D volume is needed")
    extra = [axis for axis in range(len(sizes)) if axis not in spatial]
    volumes = int(np.prod([sizes[axis] for axis in extra]))
    if volumes > 1:
        raise VolumeFileError(f"{path.name} holds {volumes} volumes or components; give a single 3D volume")
    array = image.array.reshape([sizes[axis] for axis in reversed(spatial)])
    affine = np.eye(4)
    if image.directions is not None:
        directions = np.column_stack([image.directions[axis] for axis in spatial])
        affine[:3, :3] = np.diag(image.to_ras) @ directions
    else:
        affine[:3, :3] = 0.0  # no geometry: reported as missing spacing by the geometry checks
    if image.origin is not None:
        affine[:3, 3] = np.array(image.to_ras) * image.origin
    return np.ascontiguousarray(array), affine


def _spatial_axes(image: NrrdImage, path: Path) -> list[int]:
    """NRRD axes that lie in world space (all three of a 3D file without space directions)."""
    dimension = image.array.ndim
    if image.directions is not None:
        return [axis for axis, vector in enumerate(image.directions) if vector is not None]
    if dimension > 3:
        raise VolumeFileError(
            f"{path.name} has {dimension} axes and no space directions telling which are spatial"
        )
    return list(range(dimension))


def check_output_path(
    input_path: str | Path | None, output_path: str | Path, overwrite: bool = False
) -> Path:
    """Refuse an output that is the input, exists (unless overwrite), has an unknown type or no folder."""
    output = Path(output_path)
    file_kind(output)
    if input_path is not None and _same_file(Path(input_path), output):
        raise VolumeFileError(
            f"the output {output} is the input file; choose another output path "
            "(the input is never overwritten)"
        )
    if output.is_dir():
        raise VolumeFileError(f"the output {output} is a folder; give a file name ending in .nii.gz or .nrrd")
    if output.exists() and not overwrite:
        raise VolumeFileError(
            f"{output} already exists; choose another name or ask to overwrite it (--overwrite)"
        )
    if not output.parent.is_dir():
        raise VolumeFileError(f"the output folder {output.parent} does not exist; create it first")
    return output


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
) -> Path:
    """Write (K, J, I) voxels with a RAS affine as NIfTI or NRRD, by extension, atomically.

    `compress=False` writes NRRD data raw instead of gzip (NIfTI: the extension decides).
    `synthetic` (e.g. {"model": id, "model_sha256": ..., "source": ...}) labels a volume made by a
    network: NIfTI `descrip` starts with SYNTHETIC_LABEL and `intent_name` is "SYNTHETIC"; NRRD gets
    `VolumetricSR_synthetic:=true` and one `VolumetricSR_<key>:=<value>` line per entry.
    The file appears complete or not at all: it is written to a hidden temporary file in the same
    folder, then renamed. NIfTI gets sform and qform code 1 (scanner); NRRD is written in LPS, gzip.
    """
    path = check_output_path(input_path, path, overwrite)
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    if array.ndim != 3:
        raise VolumeFileError(f"only 3D volumes are written, got an array of shape {array.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise VolumeFileError("the voxel-to-world matrix must be a finite 4 x 4 matrix")
    kind = file_kind(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    try:
        with atomic_path(path, suffix) as temporary:
            if kind == "nifti":
                _write_nifti(temporary, array, affine, path.name, synthetic)
            else:
                directions, origin = _LPS_TO_RAS @ affine[:3, :3], _LPS_TO_RAS @ affine[:3, 3]
                labels = None if synthetic is None else _nrrd_labels(synthetic)
                write_nrrd(temporary, array, directions, origin, compress=compress, key_values=labels)
    except OSError as exc:
        raise VolumeFileError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except NrrdError as exc:
        raise VolumeFileError(f"cannot write {path.name}: {exc}") from exc
    return path


def synthetic_description(synthetic: Mapping[str, str]) -> str:
    """One line that says a volume is synthetic and which model made it (80 characters at most)."""
    model = synthetic.get("model", "")
    return f"{SYNTHETIC_LABEL}, model {model}"[:80] if model else SYNTHETIC_LABEL


def _nrrd_labels(synthetic: Mapping[str, str]) -> dict[str, str]:
    labels = {"VolumetricSR_synthetic": "true", "VolumetricSR_description": synthetic_description(synthetic)}
    labels.update({f"VolumetricSR_{key}": str(value) for key, value in synthetic.items()})
    return labels


def _write_nifti(
    path: Path, array: np.ndarray, affine: np.ndarray, name: str, synthetic: Mapping[str, str] | None
) -> None:
    nib = _nibabel()
    try:
        image = nib.Nifti1Image(array.transpose(2, 1, 0), affine)
        if synthetic is not None:
            image.header["descrip"] = synthetic_description(synthetic).encode("ascii", "replace")
            image.header["intent_name"] = b"SYNTHETIC"
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        image.header.set_data_dtype(array.dtype)
        image.header.set_xyzt_units("mm", "sec")
        nib.save(image, path)
    except nib.spatialimages.HeaderDataError as exc:
        raise VolumeFileError(f"cannot store {array.dtype} voxels in {name}: {exc}") from exc

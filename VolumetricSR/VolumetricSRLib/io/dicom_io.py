"""DICOM CT series in and out.

In: the CT series of a folder (searched with its subfolders), headers read with pydicom, voxels with
SimpleITK/GDCM (every transfer syntax GDCM decodes, rescale slope and intercept applied per slice).
Geometry comes from ImagePositionPatient / ImageOrientationPatient / PixelSpacing alone; a series
with uneven spacing, missing slices, gantry tilt or mixed orientations is refused with one message.

Out: a new derived CT series (ImageType DERIVED\\SECONDARY, Manufacturer VolumetricSR,
SeriesDescription starting with SYNTHETIC) in the study of the DICOM input, or under a new anonymous
patient and study, written with pydicom to a hidden sibling folder and renamed into place. An existing
folder is replaced only when it holds nothing but such a series (never a scanner's series).
"""

from __future__ import annotations

import copy
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.misc import is_dicom
from pydicom.uid import (
    JPEG2000,
    JPEG2000MC,
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    MediaStorageDirectoryStorage,
    MPEGTransferSyntaxes,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from .dicom_source import POSITION_TOLERANCE_MM, DicomSource
from .volume import LPS_TO_RAS, Volume, VolumeFileError, synthetic_series_description

ORIENTATION_TOLERANCE = 1e-4
AXIAL_TOLERANCE_DEGREES = 5.0  # ImageType AXIAL: the slice normal at most this far from the patient z axis
SERIES_NUMBER_OFFSET = 1000  # derived series number = source series number + this
MANUFACTURER = "VolumetricSR"  # with ImageType DERIVED: the mark of a series this module wrote
_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
# Copied from the input series: who and which study (patient, study, frame of reference modules)
# and what the derived images still describe of the acquisition.
_COPIED = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "PatientPosition",
    "BodyPartExamined",
    "LongitudinalTemporalInformationModified",
    "PatientComments",
    # General Series: what the derived images still show (Laterality is type 2C: kept even when empty)
    "Laterality",
    "ProtocolName",
    "OperatorsName",
    "PerformingPhysicianName",
    # Contrast/Bolus: a reader must know that contrast was given
    "ContrastBolusAgent",
    "ContrastBolusAgentSequence",
    "ContrastBolusRoute",
    "ContrastBolusAdministrationRouteSequence",
    "ContrastBolusVolume",
    "ContrastBolusStartTime",
    "ContrastBolusStopTime",
    "ContrastBolusTotalDose",
    "ContrastFlowRate",
    "ContrastFlowDuration",
    "ContrastBolusIngredient",
    "ContrastBolusIngredientConcentration",
    "KVP",
    "AcquisitionNumber",
    "WindowCenter",
    "WindowWidth",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)
# Transfer syntaxes whose pixel data went through lossy compression (DICOM PS3.5, section 8.2)
_LOSSY_SYNTAXES = frozenset(
    (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, JPEG2000MC, *MPEGTransferSyntaxes)
)
# Type 2 attributes of the CT Image module that must be present, empty when the input gives no value.
_TYPE_2 = ("KVP", "AcquisitionNumber")
ANONYMOUS_PATIENT = "Anonymous"


@dataclass
class DicomSeries:
    """The image files of one SeriesInstanceUID found in a folder (headers only)."""

    uid: str
    slices: list[Dataset]

    @property
    def modality(self) -> str:
        return str(self.slices[0].get("Modality", "") or "unknown modality")

    @property
    def description(self) -> str:
        return str(self.slices[0].get("SeriesDescription", "") or "no description")

    def summary(self) -> str:
        """One line for a list of series: UID, description, modality, slice count and spacing."""
        return (
            f"  {self.uid}: {self.description!r}, {self.modality}, {len(self.slices)} slices, "
            f"{_spacing_text(self.slices)}"
        )


def read_dicom_series(folder: str | Path, series: str | None = None) -> Volume:
    """The CT series of `folder` (or the one whose SeriesInstanceUID is `series`) as a Volume in HU."""
    folder = Path(folder)
    chosen = choose_series(find_series(folder), series, folder)
    _refuse_damaged_files(chosen)
    ordered, affine = series_geometry(chosen)
    array = _read_voxels(ordered, chosen.uid)
    numbers = [ds.get("InstanceNumber") for ds in (ordered[0], ordered[-1])]
    descend = None not in numbers and len(ordered) > 1 and int(numbers[0]) > int(numbers[1])
    orientation = np.array([float(v) for v in ordered[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    source = DicomSource(
        folder=folder,
        series_uid=chosen.uid,
        header=ordered[0],
        numbers_descend=descend,
        slices=tuple((str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in ordered),
        depths=tuple(float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal) for ds in ordered),
    )
    return Volume(array=array, affine=affine, path=folder, dicom=source)


def find_series(folder: Path) -> list[DicomSeries]:
    """Image series in `folder` and its subfolders, by SeriesInstanceUID; refuses a folder without images."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    groups: dict[str, list[Dataset]] = {}
    dicomdir = other_objects = 0
    for path in files:
        header = _read_header(path)
        if header is None:
            continue
        if _is_dicomdir(header, path):
            dicomdir += 1
        elif "Rows" in header and "Columns" in header:
            groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append(header)
        else:
            other_objects += 1
    if groups:
        return [DicomSeries(uid, slices) for uid, slices in groups.items()]
    if dicomdir:
        raise VolumeFileError(
            f"{folder} holds only a DICOMDIR (the index of a DICOM disc) and no image files; copy the "
            "image files it lists as well (the whole disc or export), then give that folder"
        )
    if other_objects:
        raise VolumeFileError(
            f"{folder} holds {other_objects} DICOM files but no images (e.g. reports or structure sets); "
            "give the folder of the CT image series"
        )
    raise VolumeFileError(
        f"{folder} is a folder without DICOM files ({len(files)} other files in it and its subfolders); give "
        f"a folder holding a CT series, or a volume file (.nii.gz, .nrrd)"
    )


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file (pixel data not read), None for any other file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises many types for files that are not DICOM: they are skipped
        return None


def _is_dicomdir(header: Dataset, path: Path) -> bool:
    meta = getattr(header, "file_meta", None)
    media = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    return media == MediaStorageDirectoryStorage or path.name.upper() == "DICOMDIR"


def choose_series(found: list[DicomSeries], wanted: str | None, folder: Path) -> DicomSeries:
    """The series `wanted`, else the only CT series; refuses non-CT and an ambiguous choice with the list."""
    listing = "\n".join(series.summary() for series in found)
    if wanted is not None:
        matches = [series for series in found if series.uid == wanted]
        if not matches:
            raise VolumeFileError(
                f"{folder} holds no series {wanted}; choose one of these with --series UID:\n{listing}"
            )
        return _only_ct(matches[0], folder)
    ct = [series for series in found if series.modality == "CT"]
    if len(found) == 1 or not ct:
        if len(found) > 1:
            raise VolumeFileError(
                f"{folder} holds no CT series; VolumetricSR super-resolves CT only. Series found:\n{listing}"
            )
        return _only_ct(found[0], folder)
    if len(ct) > 1:
        raise VolumeFileError(
            f"{folder} holds {len(ct)} CT series; choose one with --series UID:\n"
            + "\n".join(series.summary() for series in ct)
        )
    others = [series for series in found if series is not ct[0]]
    warnings.warn(
        f"{folder} also holds {len(others)} series that {'is' if len(others) == 1 else 'are'} not CT, "
        "ignored: "
        + "; ".join(
            f"{s.modality} {s.description!r} ({len(s.slices)} files, e.g. {Path(s.slices[0].filename).name})"
            for s in others
        ),
        stacklevel=2,
    )
    return ct[0]


def _refuse_damaged_files(series: DicomSeries) -> None:
    """Refuse, by name, files beside the series' own that are empty or damaged DICOM (a DICOM preamble,
    or the series files' own suffix, but no readable header, or one cut short before its image
    attributes): a slice lost at either end of a series leaves no gap to notice, so such a file must
    never be skipped silently. Other files (notes, thumbnails, other series) are left alone."""
    own = {Path(ds.filename).resolve() for ds in series.slices}
    suffixes = {Path(ds.filename).suffix.lower() for ds in series.slices}
    damaged = []
    for directory in sorted({path.parent for path in own}):
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.resolve() in own:
                continue
            looks_dicom = path.stat().st_size == 0 or path.suffix.lower() in suffixes or _has_preamble(path)
            if looks_dicom and _is_damaged(_read_header(path), series.uid):
                damaged.append(path)
    if damaged:
        names = ", ".join(str(path) for path in damaged[:5]) + (" ..." if len(damaged) > 5 else "")
        raise VolumeFileError(
            f"{len(damaged)} file(s) beside series {series.uid} cannot be read as DICOM (empty or damaged): "
            f"{names}; a slice lost at either end of a series cannot be detected, so the series may be "
            "incomplete: copy or export it again, or remove the file(s) if they do not belong to it"
        )


def _is_damaged(header: Dataset | None, series_uid: str) -> bool:
    """No readable header, or one of this series (or of none) cut short before its image attributes."""
    if header is None:
        return True
    of_series = str(header.get("SeriesInstanceUID", series_uid)) == series_uid
    return of_series and not ("Rows" in header and "Columns" in header)


def _has_preamble(path: Path) -> bool:
    """True when the file carries the DICOM preamble ('DICM' at byte 128)."""
    with open(path, "rb") as stream:
        stream.seek(128)
        return stream.read(4) == b"DICM"


def _only_ct(series: DicomSeries, folder: Path) -> DicomSeries:
    if series.modality != "CT":
        raise VolumeFileError(
            f"series {series.uid} in {folder} is {series.modality} ({series.description}), not CT; "
            "VolumetricSR super-resolves CT only: give a CT series"
        )
    return series


def series_geometry(series: DicomSeries) -> tuple[list[Dataset], np.ndarray]:
    """Slices sorted along the slice normal and the RAS affine of the grid they form; refuses series
    that do not form one regular grid (the message names the problem and what to do)."""
    slices = series.slices
    _check_frames_and_sizes(series)
    row, col, pixel_spacing = _common_plane(series)
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    _check_positions(positions, normal, series.uid)
    lps = np.eye(4)
    step = (positions[-1] - positions[0]) / (len(slices) - 1)
    lps[:3, :3] = np.column_stack([row * pixel_spacing[1], col * pixel_spacing[0], step])
    lps[:3, 3] = positions[0]
    affine = np.eye(4)
    affine[:3] = LPS_TO_RAS @ lps[:3]
    return [slices[i] for i in order], affine


def _check_frames_and_sizes(series: DicomSeries) -> None:
    slices = series.slices
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in slices):
        raise VolumeFileError(
            f"series {series.uid} is a multi-frame (enhanced) DICOM object; VolumetricSR reads classic "
            "one-slice-per-file CT series: convert it first (e.g. load it in 3D Slicer and save it as NRRD)"
        )
    if len(slices) < 2:
        raise VolumeFileError(
            f"series {series.uid} has a single slice; super-resolution needs a 3D volume with several slices"
        )
    for name in _GEOMETRY:
        lacking = [ds for ds in slices if not ds.get(name)]
        if lacking:
            raise VolumeFileError(
                f"{Path(lacking[0].filename).name} of series {series.uid} has no {name}: the series lacks "
                "the slice geometry super-resolution needs (e.g. a screenshot); export the original CT series"
            )
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in slices}
    if len(sizes) > 1:
        raise VolumeFileError(
            f"series {series.uid} mixes slices of {len(sizes)} sizes "
            f"({', '.join(f'{r} x {c}' for r, c in sorted(sizes))}); "
            "export the slices of one reconstruction as their own series"
        )


def _common_plane(series: DicomSeries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column directions (LPS) and PixelSpacing (row, column) shared by every slice."""
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in series.slices])
    distinct = _distinct_rows(orientations, ORIENTATION_TOLERANCE)
    if len(distinct) > 1:
        counts = [
            int(np.sum(np.all(np.abs(orientations - o) <= ORIENTATION_TOLERANCE, axis=1))) for o in distinct
        ]
        raise VolumeFileError(
            f"series {series.uid} mixes slice orientations ({' + '.join(map(str, counts))} slices in "
            f"{len(distinct)} orientations, e.g. a localizer among the axial slices); remove the odd slices "
            "or export the axial slices as their own series"
        )
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in series.slices])
    if len(_distinct_rows(spacings, ORIENTATION_TOLERANCE)) > 1:
        raise VolumeFileError(
            f"series {series.uid} mixes pixel spacings; export the slices of one reconstruction as their "
            "own series"
        )
    row, col = orientations[0, :3], orientations[0, 3:]
    return row / np.linalg.norm(row), col / np.linalg.norm(col), spacings[0]


def _distinct_rows(values: np.ndarray, tolerance: float) -> list[np.ndarray]:
    distinct: list[np.ndarray] = []
    for value in values:
        if not any(np.all(np.abs(value - seen) <= tolerance) for seen in distinct):
            distinct.append(value)
    return distinct


def _check_positions(positions: np.ndarray, normal: np.ndarray, uid: str) -> None:
    """Refuse shared positions, gantry tilt, missing slices and uneven spacing (positions sorted)."""
    depth = positions @ normal
    gaps = np.diff(depth)
    shared = int(np.sum(gaps <= POSITION_TOLERANCE_MM))
    if shared:
        raise VolumeFileError(
            f"series {uid}: {shared} slices share a position with another slice (several acquisitions, "
            "phases or echoes in one series); export one acquisition as its own series"
        )
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(in_plane, axis=1)) > POSITION_TOLERANCE_MM:
        tilt = np.degrees(np.arctan2(np.linalg.norm(in_plane[-1]), depth[-1] - depth[0]))
        raise VolumeFileError(
            f"series {uid} has a gantry tilt of {tilt:.1f} degrees (each slice is shifted in-plane); "
            "resample it onto a regular grid first (3D Slicer: DICOM settings, 'Acquisition geometry "
            "regularization', then harden the transform and save as NRRD) and give that file"
        )
    spacing = float(np.median(gaps))
    if np.max(np.abs(gaps - spacing)) <= POSITION_TOLERANCE_MM:
        return
    multiples = np.rint(gaps / spacing)
    if np.all(np.abs(gaps - multiples * spacing) <= POSITION_TOLERANCE_MM):
        first = int(np.argmax(multiples > 1))
        raise VolumeFileError(
            f"series {uid} misses {int(np.sum(multiples - 1))} slice(s): a gap of {gaps[first]:.3g} mm after "
            f"slice {first + 1} where slices are {spacing:.3g} mm apart; the series is incomplete: copy or "
            "export it again with all its files"
        )
    raise VolumeFileError(
        f"series {uid} has uneven slice spacing: slices are {gaps.min():.3g} to {gaps.max():.3g} mm apart; "
        "super-resolution needs evenly spaced slices: resample it onto a regular grid first (e.g. 3D "
        "Slicer's Resample Scalar Volume) and give it as NRRD or NIfTI"
    )


def _spacing_text(slices: list[Dataset]) -> str:
    """'0.7 x 0.7 x 5 mm' (column, row, median slice gap), or 'spacing unknown'."""
    try:
        row_mm, column_mm = (float(v) for v in slices[0].PixelSpacing)
        orientation = np.array([float(v) for v in slices[0].ImageOrientationPatient])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    except (AttributeError, TypeError, ValueError):
        return "spacing unknown"
    depth = np.sort(positions @ np.cross(orientation[:3], orientation[3:]))
    gap = f"{np.median(np.diff(depth)):.3g}" if len(depth) > 1 else "?"
    return f"{column_mm:.3g} x {row_mm:.3g} x {gap} mm"


def _read_voxels(ordered: list[Dataset], uid: str) -> np.ndarray:
    """(K, J, I) voxels in the slices' order, rescale slope/intercept applied: int16 when every value is
    a whole number in its range (CT in HU), float32 otherwise."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(ds.filename) for ds in ordered])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        values = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        culprit = _first_unreadable_pixels([Path(ds.filename) for ds in ordered])
        where = f" in {culprit}" if culprit is not None else ""
        raise VolumeFileError(
            f"cannot read the pixel data of series {uid}{where} ({reason}); the file may be damaged or use a "
            "compression GDCM cannot decode: export the series again uncompressed"
        ) from exc
    whole = np.array_equal(values, np.rint(values))
    if whole and values.min() >= -32768 and values.max() <= 32767:
        return values.astype(np.int16)
    return values


MARKER_TEXT = "SYNTHETIC"


def synthetic_marker(shape: tuple[int, int]) -> np.ndarray:
    """(rows, columns) mask of the word SYNTHETIC in the top left corner, about a third of the width."""
    from PIL import Image, ImageDraw, ImageFont

    rows, columns = shape
    size = max(8, columns // 20)
    image = Image.new("L", (columns, rows), 0)
    ImageDraw.Draw(image).text(
        (max(1, columns // 50), max(1, rows // 50)), MARKER_TEXT, fill=255, font=ImageFont.load_default(size)
    )
    return np.asarray(image) > 127


def _first_unreadable_pixels(paths: list[Path]) -> Path | None:
    """The first file whose pixel data ITK cannot read on its own, or None."""
    import SimpleITK as sitk

    for path in paths:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            return path
    return None


def check_output_folder(input_path: str | Path | None, output: str | Path, overwrite: bool = False) -> Path:
    """A folder a DICOM series may be written to: new or empty, or (with overwrite) holding only files of
    a synthetic series this module wrote (is_our_output); never the input folder or inside it."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise VolumeFileError(
            f"{output} is a file; give a new folder for the DICOM series (or a .nii.gz or .nrrd file name)"
        )
    source = Path(input_path) if input_path is not None else None
    if source is not None and source.is_dir():
        inside = output.resolve() == source.resolve() or source.resolve() in output.resolve().parents
        if inside:
            raise VolumeFileError(
                f"the output folder {output} is the input DICOM folder or inside it; choose a folder outside "
                "the input (the input is never changed)"
            )
    if not output.parent.is_dir():
        raise VolumeFileError(f"the output folder {output.parent} does not exist; create it first")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise VolumeFileError(
                f"{output} already exists and is not empty; choose a new or empty folder, or ask to replace "
                "it (--overwrite)"
            )
        foreign = next((p for p in sorted(output.iterdir()) if not is_our_output(p)), None)
        if foreign is not None:
            what = "a DICOM file" if foreign.is_file() and is_dicom(foreign) else "a file"
            raise VolumeFileError(
                f"{output} holds {foreign.name}, {what} that VolumetricSR did not write; --overwrite "
                "replaces only a folder holding nothing but a synthetic series VolumetricSR wrote (never a "
                "scanner's series or other files): choose another output folder"
            )
    return output


def is_our_output(path: Path) -> bool:
    """Whether `path` is a file of a synthetic series this module wrote: DICOM with Manufacturer
    VolumetricSR and ImageType DERIVED (what write_dicom_series sets)."""
    if not path.is_file() or path.is_symlink() or not is_dicom(path):
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer", "ImageType"])
    except Exception:  # pydicom raises many types for damaged files: not ours
        return False
    image_type = header.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    derived = bool(values) and str(values[0]).strip().upper() == "DERIVED"
    return derived and str(header.get("Manufacturer", "")).strip() == MANUFACTURER


def write_dicom_series(
    folder: str | Path,
    array: np.ndarray,
    affine: np.ndarray,
    synthetic: Mapping[str, str],
    source: DicomSource | None = None,
    overwrite: bool = False,
    comments: str | None = None,
    burn_in_marker: bool = False,
) -> Path:
    """Write int16 HU voxels (K, J, I) with a RAS affine as a derived CT series, one file per slice.

    `burn_in_marker` writes the word SYNTHETIC into the top left corner of every slice (at the
    volume's highest value, so that it shows in any window) and sets BurnedInAnnotation to YES: for
    viewers and exports that drop the header's labels. Off by default: the pixels then equal the
    prediction's.

    Patient, study and frame of reference come from `source` (the DICOM input), else they are new and
    anonymous. `comments` (e.g. the consistency check's line) goes into ImageComments. The folder
    appears complete or not at all (written beside it, then renamed). An existing folder must be empty,
    or with `overwrite` hold only a series this module wrote (check_output_folder).
    """
    folder = check_output_folder(None, folder, overwrite)
    if array.dtype != np.int16:
        raise VolumeFileError(
            f"a DICOM series stores int16 HU voxels, got {array.dtype}; round them to int16"
        )
    row, col, pixel_spacing, positions = _image_plane(affine, array.shape[0])
    normal = np.cross(row, col)
    dataset = _series_dataset(synthetic, source)
    dataset.ImageType = ["DERIVED", "SECONDARY", "AXIAL" if _is_axial(normal) else "OTHER"]
    if comments:
        dataset.ImageComments = comments[:10240]  # LT: at most 10240 characters
    dataset.ImageOrientationPatient = _ds([*row, *col])
    dataset.PixelSpacing = _ds(pixel_spacing)
    thickness = abs(float((positions[-1] - positions[0]) @ normal)) / max(len(positions) - 1, 1)
    dataset.SliceThickness = dataset.SpacingBetweenSlices = _ds([thickness])[0]
    dataset.Rows, dataset.Columns = int(array.shape[1]), int(array.shape[2])
    voxels = np.ascontiguousarray(array, dtype="<i2")
    if burn_in_marker:
        voxels = voxels.copy()
        voxels[:, synthetic_marker(voxels.shape[1:])] = voxels.max()
        dataset.BurnedInAnnotation = "YES"
    try:
        with _atomic_folder(folder) as temporary:
            for index, position in enumerate(positions):
                dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                descend = source is not None and source.numbers_descend
                dataset.InstanceNumber = len(positions) - index if descend else index + 1
                if source is not None and source.depths:
                    dataset.SourceImageSequence = _source_images(source.sources_of(float(position @ normal)))
                dataset.ImagePositionPatient = _ds(position)
                dataset.SliceLocation = _ds([position @ normal])[0]
                dataset.PixelData = voxels[index].tobytes()
                dataset.save_as(temporary / f"IMG{index + 1:05d}.dcm", enforce_file_format=True)
    except OSError as exc:
        raise VolumeFileError(f"cannot write {folder}: {exc.strerror or exc}") from exc
    return folder


def _image_plane(affine: np.ndarray, slices: int) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    """Row and column directions (LPS), PixelSpacing (row, column) and each slice's position (LPS)."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    if np.any(spacing[:2] <= 0):
        raise VolumeFileError("the volume's in-plane spacing is zero; DICOM cannot store it")
    row, col = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    if abs(row @ col) > ORIENTATION_TOLERANCE:
        raise VolumeFileError(
            "the volume's in-plane axes are not perpendicular, which DICOM cannot store; write NIfTI or NRRD"
        )
    positions = lps[:, 3] + np.outer(np.arange(slices), lps[:, 2])
    return row, col, [float(spacing[1]), float(spacing[0])], positions


def _is_axial(normal_lps: np.ndarray) -> bool:
    """Whether a slice normal is within AXIAL_TOLERANCE_DEGREES of the patient's z (head-feet) axis."""
    cosine = abs(float(normal_lps[2])) / float(np.linalg.norm(normal_lps))
    return cosine >= np.cos(np.deg2rad(AXIAL_TOLERANCE_DEGREES))


def _lossy_compression(source: DicomSource | None) -> str:
    """LossyImageCompression of a derived series: "01" once the input was lossy-compressed (its own
    value, or a lossy transfer syntax), else "00"."""
    if source is None:
        return "00"
    value = str(source.header.get("LossyImageCompression", "") or "")
    if value:
        return value
    meta = getattr(source.header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return "01" if syntax is not None and syntax in _LOSSY_SYNTAXES else "00"


def _series_dataset(synthetic: Mapping[str, str], source: DicomSource | None) -> Dataset:
    """Everything but the per-slice attributes of a derived CT series."""
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if source is not None:
        for keyword in _COPIED:
            if keyword in source.header:
                dataset.add(copy.deepcopy(source.header.data_element(keyword)))
        number = str(source.header.get("SeriesNumber", "") or "0")
        dataset.SeriesNumber = (int(number) if number.isdigit() else 0) + SERIES_NUMBER_OFFSET
    else:
        dataset.PatientName, dataset.PatientID = ANONYMOUS_PATIENT, ANONYMOUS_PATIENT.upper()
        dataset.PatientBirthDate = dataset.PatientSex = dataset.ReferringPhysicianName = ""
        dataset.StudyDate, dataset.StudyTime, dataset.StudyID, dataset.AccessionNumber = date, time, "", ""
        dataset.StudyDescription = "VolumetricSR SYNTHETIC (anonymous: the input was not DICOM)"
        dataset.PatientPosition = ""
        dataset.SeriesNumber = SERIES_NUMBER_OFFSET
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if not dataset.get(keyword):
            setattr(dataset, keyword, generate_uid())
    for keyword in _TYPE_2:
        if keyword not in dataset:
            setattr(dataset, keyword, None)
    dataset.SOPClassUID = CTImageStorage
    dataset.Modality = "CT"
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SeriesDescription = synthetic_series_description(synthetic.get("model", ""))
    dataset.DerivationDescription = _derivation(synthetic, source)
    dataset.DerivationCodeSequence = [_code_item("SpatialResampling")]
    dataset.SeriesDate = dataset.ContentDate = dataset.InstanceCreationDate = date
    dataset.SeriesTime = dataset.ContentTime = dataset.InstanceCreationTime = time
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = str(synthetic.get("model", ""))[:64]
    dataset.BurnedInAnnotation = "NO"
    dataset.LossyImageCompression = _lossy_compression(source)
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleIntercept, dataset.RescaleSlope, dataset.RescaleType = "0", "1", "HU"
    return dataset


def _derivation(synthetic: Mapping[str, str], source: DicomSource | None) -> str:
    """DerivationDescription: the architecture (model card label), model id, weights sha256 and the input
    series (1024 characters at most)."""
    origin = f"series {source.series_uid}" if source is not None else f"file {synthetic.get('source', '?')}"
    architecture = synthetic.get("architecture")
    by = f"VolumetricSR ({architecture})" if architecture else "VolumetricSR"
    resampled = synthetic.get("slice_resampling")
    then = f"; then slices resampled: {resampled}" if resampled else ""
    if synthetic.get("adaptation"):
        then = f"; {synthetic['adaptation']}{then}"
    return (
        f"SYNTHETIC: thin slices super-resolved by {by} model {synthetic.get('model', '?')}, "
        f"weights sha256 {synthetic.get('model_sha256', '?')}, from {origin}{then}; not acquired by a scanner"
    )[:1024]


def _code_item(name: str) -> Dataset:
    """A code sequence item (CodeValue, CodingSchemeDesignator, CodeMeaning) of a DICOM (DCM) code, by
    its keyword in pydicom's code dictionary (loaded on first use: it takes a moment to import)."""
    from pydicom.sr.codedict import codes

    code = getattr(codes.DCM, name)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
        code.value,
        code.scheme_designator,
        code.meaning,
    )
    return item


def _source_images(references: list[tuple[str, str]]) -> list[Dataset]:
    """SourceImageSequence items: each source slice, as the source of an image processing operation."""
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        item.PurposeOfReferenceCodeSequence = [_code_item("SourceImageForImageProcessingOperation")]
        items.append(item)
    return items


def _ds(values) -> list[DSfloat]:
    """Decimal strings of at most 16 characters (DICOM DS)."""
    return [DSfloat(float(value), auto_format=True) for value in values]


@contextmanager
def _atomic_folder(target: Path) -> Iterator[Path]:
    """A hidden sibling folder to write into; it replaces `target` (empty, or checked to hold only a series
    this module wrote) when the block ends normally and is removed when it raises. `target` is resolved
    first: '.' or '..' have no name to put a sibling beside."""
    target = Path(target).resolve()
    token = secrets.token_hex(4)
    temporary = target.with_name(f".{target.name}.{token}.partial")
    temporary.mkdir()
    try:
        yield temporary
        if target.exists():
            old = target.with_name(f".{target.name}.{token}.old")
            target.rename(old)
            try:
                temporary.rename(target)
            except OSError:
                old.rename(target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            temporary.rename(target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)

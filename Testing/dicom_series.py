"""Test helper: write a CT series slice by slice with pydicom, with known geometry (independent of the
project's DICOM writer), and the RAS affine it should read back as."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS = np.diag([-1.0, -1.0, 1.0])
AXIAL_ROW, AXIAL_COLUMN = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])


def rotation(axis: list[float], degrees: float) -> np.ndarray:
    """Rotation matrix about `axis` by `degrees` (Rodrigues)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def ras_affine(row: np.ndarray, col: np.ndarray, pixel_spacing: tuple[float, float], origin_lps, step_lps):
    """The RAS affine of slices with LPS row/column directions, PixelSpacing (row, column), the first
    slice's LPS position and the LPS step from one slice to the next."""
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([row * pixel_spacing[1], col * pixel_spacing[0], step_lps])
    lps[:3, 3] = origin_lps
    affine = np.eye(4)
    affine[:3] = LPS @ lps[:3]
    return affine


def write_series(
    folder: Path,
    stored: np.ndarray,
    positions: np.ndarray,
    row: np.ndarray = AXIAL_ROW,
    col: np.ndarray = AXIAL_COLUMN,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    *,
    series_uid: str | None = None,
    modality: str = "CT",
    description: str = "thick 5 mm",
    slopes: list[float] | None = None,
    intercept: float = -1024.0,
    instance_numbers: list[int] | None = None,
    study_uid: str = "1.2.3.4.5",
    orientations: list[np.ndarray] | None = None,
) -> list[Path]:
    """Slice k of `stored` (uint16 (K, J, I)) at LPS `positions[k]`, one file each (named by a shuffled
    number so file order says nothing). Returns the file paths, in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    count = stored.shape[0]
    slopes = slopes or [1.0] * count
    numbers = instance_numbers or list(range(1, count + 1))
    names = np.random.default_rng(count).permutation(count)
    paths = []
    for k in range(count):
        orientation = orientations[k] if orientations else np.concatenate([row, col])
        dataset = Dataset()
        dataset.file_meta = FileMetaDataset()
        sop_class = CTImageStorage if modality == "CT" else MRImageStorage
        dataset.file_meta.MediaStorageSOPClassUID = sop_class
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.SOPClassUID = sop_class
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.Modality = modality
        dataset.PatientName, dataset.PatientID, dataset.PatientSex = "Test^Patient", "P-0042", "F"
        dataset.PatientBirthDate = "19700101"
        dataset.StudyInstanceUID, dataset.StudyID, dataset.AccessionNumber = study_uid, "S1", "A77"
        dataset.StudyDate, dataset.StudyTime, dataset.StudyDescription = "20240102", "101500", "CHEST"
        dataset.FrameOfReferenceUID = study_uid + ".9"
        dataset.SeriesInstanceUID, dataset.SeriesNumber = series_uid, 3
        dataset.SeriesDescription = description
        dataset.InstanceNumber = numbers[k]
        dataset.ImagePositionPatient = [float(v) for v in positions[k]]
        dataset.ImageOrientationPatient = [float(v) for v in orientation]
        dataset.PixelSpacing = list(pixel_spacing)
        dataset.SliceThickness = 5
        dataset.Rows, dataset.Columns = stored.shape[1], stored.shape[2]
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = (
            16,
            16,
            15,
            0,
        )
        dataset.RescaleSlope, dataset.RescaleIntercept = slopes[k], intercept
        dataset.PixelData = np.ascontiguousarray(stored[k], dtype="<u2").tobytes()
        path = folder / f"slice{names[k]:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def thick_positions(count: int, step_lps: np.ndarray, origin_lps=(-120.0, -95.5, 40.25)) -> np.ndarray:
    """LPS positions origin + k * step, k = 0 .. count - 1."""
    return np.asarray(origin_lps, float) + np.outer(np.arange(count), np.asarray(step_lps, float))

"""DICOM in (series found, sorted, checked, geometry from the headers, rescale applied) and out (a
derived SYNTHETIC series read back by pydicom, SimpleITK and our reader), on series written here with
known geometry and on Slicer's real head CT series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_series import LPS, ras_affine, rotation, thick_positions, write_series
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import MediaStorageDirectoryStorage

from conftest import shared_ct
from VolumetricSRLib.io import dicom_io
from VolumetricSRLib.io.dicom_io import check_output_folder, write_dicom_series
from VolumetricSRLib.io.volume_io import VolumeFileError, read_volume, write_volume

SHAPE = (6, 10, 12)  # (K, J, I): all sizes differ
SYNTHETIC = {"model": "tvsrn-x5-test", "architecture": "TVSRN", "model_sha256": "cd" * 32, "source": "thick"}


def stored_values(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Distinct uint16 stored values: any flip or shift of an axis changes them."""
    k, j, i = np.indices(shape)
    return (24 + 160 * k + 11 * j + 3 * i).astype(np.uint16)


def oblique_series(folder: Path, step_sign: float = 1.0, **options) -> tuple[list[Path], np.ndarray]:
    """An oblique 5 mm series (file k at slice k) and the RAS affine it should read back as."""
    turn = rotation([1.0, 2.0, 0.5], 27.0)
    row, col = turn[:, 0], turn[:, 1]
    step = step_sign * 5.0 * np.cross(row, col)
    positions = thick_positions(SHAPE[0], step)
    paths = write_series(folder, stored_values(), positions, row, col, (0.8, 0.7), **options)
    return paths, ras_affine(row, col, (0.8, 0.7), positions[0], step)


def assert_slices_where_their_files_say(volume, paths: list[Path]) -> None:
    """Each file's pixels sit in the volume at the slice whose world position is the file's position."""
    for path in paths:
        header = pydicom.dcmread(path)
        position = LPS @ np.array([float(v) for v in header.ImagePositionPatient])
        k = int(
            np.argmin([np.linalg.norm(volume.affine[:3] @ [0, 0, k, 1] - position) for k in range(SHAPE[0])])
        )
        np.testing.assert_allclose(volume.affine[:3] @ [0, 0, k, 1], position, atol=1e-9)
        expected = header.pixel_array * float(header.RescaleSlope) + float(header.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[k], expected)


# ---------------------------------------------------------------- DICOM in


def test_oblique_series_reads_with_the_exact_geometry_and_rescaled_voxels(tmp_path: Path) -> None:
    paths, affine = oblique_series(tmp_path / "ct")
    volume = read_volume(tmp_path / "ct")
    assert volume.array.shape == SHAPE and volume.array.dtype == np.int16
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(volume.array, stored_values().astype(np.int16) - 1024)
    assert_slices_where_their_files_say(volume, paths)
    assert volume.dicom.series_uid == pydicom.dcmread(paths[0]).SeriesInstanceUID
    assert volume.dicom.header.SOPInstanceUID == pydicom.dcmread(paths[0]).SOPInstanceUID  # first slice
    assert volume.path == tmp_path / "ct"


def test_slices_stored_in_reverse_order_are_sorted_along_the_normal(tmp_path: Path) -> None:
    paths, affine = oblique_series(tmp_path / "ct", step_sign=-1.0)  # instance 1 is the top slice
    volume = read_volume(tmp_path / "ct")
    flipped = affine.copy()
    flipped[:3, 2] = -affine[:3, 2]
    flipped[:3, 3] = affine[:3] @ [0, 0, SHAPE[0] - 1, 1]
    np.testing.assert_allclose(volume.affine, flipped, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(volume.array, stored_values()[::-1].astype(np.int16) - 1024)
    assert_slices_where_their_files_say(volume, paths)


def test_rescale_slope_and_intercept_are_applied_per_slice(tmp_path: Path) -> None:
    slopes = [1.0, 0.5, 2.0, 1.0, 0.25, 1.0]
    paths, _ = oblique_series(tmp_path / "ct", slopes=slopes)
    volume = read_volume(tmp_path / "ct")
    assert volume.array.dtype == np.float32  # 0.5 and 0.25 make fractions: no int16
    expected = stored_values() * np.array(slopes)[:, None, None] - 1024
    np.testing.assert_array_equal(volume.array, expected.astype(np.float32))
    assert_slices_where_their_files_say(volume, paths)


def refused(folder: Path, message: str, series: str | None = None) -> str:
    with pytest.raises(VolumeFileError) as error:
        read_volume(folder, series)
    assert message in str(error.value), str(error.value)
    return str(error.value)


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    positions = thick_positions(SHAPE[0], [0, 0, 5.0])
    positions[3:, 2] += 1.5  # one gap of 6.5 mm
    write_series(tmp_path / "ct", stored_values(), positions)
    text = refused(tmp_path / "ct", "has uneven slice spacing: slices are 5 to 6.5 mm apart")
    assert "resample it onto a regular grid first" in text


def test_a_missing_slice_is_refused(tmp_path: Path) -> None:
    positions = thick_positions(SHAPE[0] + 1, [0, 0, 5.0])
    write_series(tmp_path / "ct", stored_values(), np.delete(positions, 2, axis=0))
    text = refused(
        tmp_path / "ct", "misses 1 slice(s): a gap of 10 mm after slice 2 where slices are 5 mm apart"
    )
    assert "export it again with all its files" in text


def test_gantry_tilt_is_refused_with_its_angle(tmp_path: Path) -> None:
    tilt = np.deg2rad(15.0)
    write_series(tmp_path / "ct", stored_values(), thick_positions(SHAPE[0], [0, 5 * np.tan(tilt), 5.0]))
    text = refused(tmp_path / "ct", "has a gantry tilt of 15.0 degrees")
    assert "Acquisition geometry regularization" in text


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    axial = np.array([1.0, 0, 0, 0, 1, 0])
    coronal = np.array([1.0, 0, 0, 0, 0, -1])
    orientations = [axial] * 5 + [coronal]
    write_series(tmp_path / "ct", stored_values(), thick_positions(6, [0, 0, 5.0]), orientations=orientations)
    refused(tmp_path / "ct", "mixes slice orientations (5 + 1 slices in 2 orientations, e.g. a localizer")


def test_shared_positions_are_refused(tmp_path: Path) -> None:
    positions = np.concatenate([thick_positions(3, [0, 0, 5.0])] * 2)
    write_series(tmp_path / "ct", stored_values(), positions)
    refused(tmp_path / "ct", "3 slices share a position with another slice (several acquisitions")


def test_two_series_are_listed_and_one_is_chosen(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    write_series(folder / "a", stored_values(), thick_positions(6, [0, 0, 5.0]), series_uid="1.2.3.1")
    other = stored_values((4, 10, 12))
    write_series(
        folder / "b", other, thick_positions(4, [0, 0, 2.5]), series_uid="1.2.3.2", description="thin"
    )
    text = refused(folder, "holds 2 CT series; choose one with --series UID:\n")
    assert "  1.2.3.1: 'thick 5 mm', CT, 6 slices, 0.7 x 0.8 x 5 mm" in text.splitlines()
    assert "  1.2.3.2: 'thin', CT, 4 slices, 0.7 x 0.8 x 2.5 mm" in text.splitlines()
    assert read_volume(folder, "1.2.3.2").array.shape == (4, 10, 12)
    assert read_volume(folder, "1.2.3.1").dicom.series_uid == "1.2.3.1"
    text = refused(folder, "holds no series 9.9; choose one of these with --series UID:\n", series="9.9")
    assert "1.2.3.1" in text and "1.2.3.2" in text


def test_non_ct_is_refused_and_a_ct_beside_it_is_taken(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    write_series(
        folder / "mr", stored_values(), thick_positions(6, [0, 0, 5.0]), modality="MR", series_uid="7.1"
    )
    refused(folder, "series 7.1 in", series=None)
    refused(folder / "mr", "is MR (thick 5 mm), not CT; VolumetricSR super-resolves CT only")
    write_series(folder / "ct", stored_values(), thick_positions(6, [0, 0, 5.0]), series_uid="7.2")
    with pytest.warns(
        UserWarning, match=r"also holds 1 series that is not CT, ignored: MR 'thick 5 mm' \(6 files"
    ):
        assert read_volume(folder).dicom.series_uid == "7.2"
    refused(folder, "is MR", series="7.1")


@pytest.mark.parametrize("end", ["first", "last"])
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_file_at_either_end_of_a_series_is_refused_by_name(tmp_path: Path, end: str, damage: str):
    folder = tmp_path / "series"
    paths = write_series(folder, stored_values(), thick_positions(6, [0, 0, 5.0]))
    victim = paths[0] if end == "first" else paths[-1]
    data = victim.read_bytes()
    victim.write_bytes(b"" if damage == "empty" else data[:300])  # preamble and a broken header
    text = refused(folder, "1 file(s) beside series")
    assert str(victim) in text and "cannot be read as DICOM (empty or damaged)" in text
    victim.unlink()  # removed on purpose: the five remaining slices read, no gap to see
    assert read_volume(folder).array.shape == (5, 10, 12)


def test_other_files_beside_a_series_are_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    write_series(folder, stored_values(), thick_positions(6, [0, 0, 5.0]))
    (folder / "notes.txt").write_text("scanned on Tuesday")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 600)
    (folder / ".DS_Store").write_bytes(b"")
    assert read_volume(folder).array.shape == SHAPE


def test_unreadable_pixel_data_names_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    paths = write_series(folder, stored_values(), thick_positions(6, [0, 0, 5.0]))
    paths[3].write_bytes(paths[3].read_bytes()[:-100])  # a header that parses, pixels cut short
    text = refused(folder, "cannot read the pixel data of series")
    assert f"in {paths[3]} (" in text


def test_folders_without_a_series_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "is a folder without DICOM files (0 other files")
    (empty / "notes.txt").write_text("no images here")
    refused(empty, "is a folder without DICOM files (1 other files in it and its subfolders)")

    disc = tmp_path / "disc"
    disc.mkdir()
    index = Dataset()
    index.file_meta = FileMetaDataset()
    index.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    index.file_meta.MediaStorageSOPInstanceUID = "1.2.3.99"
    index.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    index.FileSetID = "DISC"
    index.save_as(disc / "DICOMDIR", enforce_file_format=True)
    refused(disc, "holds only a DICOMDIR (the index of a DICOM disc) and no image files")

    single = tmp_path / "single"
    write_series(single, stored_values((1, 10, 12)), thick_positions(1, [0, 0, 5.0]), series_uid="5.5")
    refused(single, "series 5.5 has a single slice; super-resolution needs a 3D volume")


def test_real_head_ct_series_reads_as_gdcm_and_pydicom_see_it() -> None:
    folder = shared_ct("Slicer/CTHeadAxialDicom")
    volume = read_volume(folder)
    assert volume.array.shape == (93, 64, 64) and volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.affine, np.diag([-3.2, -3.2, 1.5, 1.0]))
    headers = sorted(
        (pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2])
    )
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in headers])
    np.testing.assert_array_equal(volume.array, expected)
    assert volume.dicom.series_uid == headers[0].SeriesInstanceUID
    assert volume.dicom.header.InstanceNumber == 1


# ---------------------------------------------------------------- DICOM out


def read_back(folder: Path) -> tuple[list[Dataset], sitk.Image]:
    """The written files with pydicom (in slice order) and the series with SimpleITK/GDCM."""
    headers = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: int(d.InstanceNumber))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return headers, reader.Execute()


def sitk_affine(image: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = LPS @ np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS @ np.array(image.GetOrigin())
    return affine


def thin_volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3000, size=(21, 10, 12)).astype(np.int16)


def test_derived_series_reads_back_in_pydicom_simpleitk_and_our_reader(tmp_path: Path) -> None:
    oblique_series(tmp_path / "in")
    source = read_volume(tmp_path / "in")
    thin_affine = source.affine.copy()
    thin_affine[:3, 2] /= 5
    array = thin_volume()
    out = write_dicom_series(tmp_path / "out", array, thin_affine, SYNTHETIC, source.dicom)

    headers, image = read_back(out)
    assert len(headers) == 21 and sorted(p.name for p in out.iterdir())[0] == "IMG00001.dcm"
    np.testing.assert_array_equal(np.stack([d.pixel_array for d in headers]), array)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    np.testing.assert_allclose(sitk_affine(image), thin_affine, atol=1e-6)
    again = read_volume(out)
    np.testing.assert_array_equal(again.array, array)
    np.testing.assert_allclose(again.affine, thin_affine, atol=1e-6)
    for k, header in enumerate(headers):
        position = LPS @ (thin_affine[:3] @ [0, 0, k, 1])
        np.testing.assert_allclose([float(v) for v in header.ImagePositionPatient], position, atol=1e-6)

    first, original = headers[0], source.dicom.header
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]  # oblique slices: not AXIAL
    assert first.SeriesDescription == "SYNTHETIC thin CT VolumetricSR tvsrn-x5-test"
    assert first.DerivationDescription == (
        "SYNTHETIC: thin slices super-resolved by VolumetricSR (TVSRN) model tvsrn-x5-test, weights sha256 "
        f"{'cd' * 32}, from series {original.SeriesInstanceUID}; not acquired by a scanner"
    )
    assert first.SeriesInstanceUID != original.SeriesInstanceUID
    assert len({d.SeriesInstanceUID for d in headers}) == 1
    assert len({d.SOPInstanceUID for d in headers}) == 21
    assert original.SOPInstanceUID not in {d.SOPInstanceUID for d in headers}
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID", "StudyDate"):
        assert first[keyword].value == original[keyword].value
    assert first.SeriesNumber == 1003
    assert float(first.SliceThickness) == pytest.approx(1.0) and float(
        first.SpacingBetweenSlices
    ) == pytest.approx(1.0)
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([0.8, 0.7])
    assert (float(first.RescaleSlope), float(first.RescaleIntercept), first.PixelRepresentation) == (
        1.0,
        0.0,
        1,
    )
    assert [d.InstanceNumber for d in headers] == list(range(1, 22))


@pytest.mark.parametrize("numbering", ["feet_to_head", "head_to_feet"])
def test_instance_numbers_run_in_the_source_series_own_direction(tmp_path: Path, numbering: str) -> None:
    positions = thick_positions(SHAPE[0], [0, 0, 5.0])  # k ascends from feet to head (LPS z)
    numbers = list(range(1, 7)) if numbering == "feet_to_head" else list(range(6, 0, -1))
    write_series(tmp_path / "in", stored_values(), positions, instance_numbers=numbers)
    source = read_volume(tmp_path / "in")
    thin_affine = source.affine.copy()
    thin_affine[:3, 2] /= 5
    out = write_dicom_series(tmp_path / "out", thin_volume(), thin_affine, SYNTHETIC, source.dicom)
    by_number = sorted((pydicom.dcmread(p) for p in out.iterdir()), key=lambda d: int(d.InstanceNumber))
    heights = [float(d.ImagePositionPatient[2]) for d in by_number]
    assert [int(d.InstanceNumber) for d in by_number] == list(range(1, 22))
    assert heights == sorted(heights, reverse=numbering == "head_to_feet")  # as the source scrolls
    assert heights[0] == (40.25 if numbering == "feet_to_head" else 40.25 + 20.0)  # 21 slices of 1 mm


def test_a_series_from_a_non_dicom_volume_gets_an_anonymous_patient_and_study(tmp_path: Path) -> None:
    affine = ras_affine(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.8, 0.7), [10, 20, 30], [0, 0, -1.0])
    out = write_dicom_series(tmp_path / "out", thin_volume(), affine, SYNTHETIC)  # k runs against the normal
    headers, image = read_back(out)
    assert str(headers[0].PatientName) == "Anonymous" and headers[0].PatientID == "ANONYMOUS"
    assert headers[0].StudyDescription == "VolumetricSR SYNTHETIC (anonymous: the input was not DICOM)"
    assert "from file thick;" in headers[0].DerivationDescription
    assert len({d.StudyInstanceUID for d in headers}) == 1 and headers[0].SeriesNumber == 1000
    # readers sort along the normal: the same world grid, slices in reverse order
    flipped = affine.copy()
    flipped[:3, 2], flipped[:3, 3] = -affine[:3, 2], affine[:3] @ [0, 0, 20, 1]
    np.testing.assert_allclose(sitk_affine(image), flipped, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), thin_volume()[::-1])


def test_the_architecture_label_names_the_network_in_the_derivation(tmp_path: Path) -> None:
    label = {**SYNTHETIC, "architecture": "MPU-Net"}
    out = write_dicom_series(tmp_path / "out", thin_volume(), np.eye(4), label)
    derivation = read_back(out)[0][0].DerivationDescription
    assert derivation.startswith("SYNTHETIC: thin slices super-resolved by VolumetricSR (MPU-Net) model ")
    assert "TVSRN" not in derivation
    unnamed = {key: value for key, value in SYNTHETIC.items() if key != "architecture"}
    out = write_dicom_series(tmp_path / "unnamed", thin_volume(), np.eye(4), unnamed)
    assert "super-resolved by VolumetricSR model tvsrn-x5-test," in read_back(out)[0][0].DerivationDescription


@pytest.mark.parametrize(
    ("axis", "degrees", "third"),
    [([1.0, 0, 0], 0.0, "AXIAL"), ([1.0, 0, 0], 4.0, "AXIAL"), ([1.0, 0, 0], 7.0, "OTHER"),
     ([1.0, 0, 0], 90.0, "OTHER"), ([0, 1.0, 0], 90.0, "OTHER"), ([0, 0, 1.0], 30.0, "AXIAL")],
    ids=["axial", "tilted-4", "tilted-7", "coronal", "sagittal", "axial-turned-in-plane"],
)  # fmt: skip
def test_image_type_is_axial_only_for_slices_near_the_patient_z_axis(tmp_path, axis, degrees, third):
    turn = rotation(axis, degrees)
    affine = ras_affine(turn[:, 0], turn[:, 1], (0.8, 0.7), [10, 20, 30], 1.0 * turn[:, 2])
    out = write_dicom_series(tmp_path / "out", thin_volume(), affine, SYNTHETIC)
    assert {tuple(d.ImageType) for d in read_back(out)[0]} == {("DERIVED", "SECONDARY", third)}


def test_each_derived_slice_names_the_source_slices_it_was_made_from(tmp_path: Path) -> None:
    paths, _ = oblique_series(tmp_path / "in")
    uids = [str(pydicom.dcmread(path).SOPInstanceUID) for path in paths]  # file k is slice k
    source = read_volume(tmp_path / "in")
    thin_affine = source.affine.copy()
    thin_affine[:3, 2] /= 5
    synthetic = {**SYNTHETIC, "slice_resampling": "cubic B-spline from 0.6 mm to 1 mm"}
    headers, _ = read_back(
        write_dicom_series(tmp_path / "out", thin_volume(), thin_affine, synthetic, source.dicom)
    )
    references = [[str(item.ReferencedSOPInstanceUID) for item in d.SourceImageSequence] for d in headers]
    assert references[0] == [uids[0]] and references[5] == [uids[1]] and references[20] == [uids[4]]
    assert references[1] == references[4] == [uids[0], uids[1]] and references[13] == [uids[2], uids[3]]
    item = headers[7].SourceImageSequence[0]
    assert item.ReferencedSOPClassUID == pydicom.uid.CTImageStorage
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
    derivation = headers[0].DerivationCodeSequence[0]
    assert (derivation.CodeValue, derivation.CodingSchemeDesignator, derivation.CodeMeaning) == (
        "113085", "DCM", "Spatial resampling",
    )  # fmt: skip
    assert "then slices resampled: cubic B-spline from 0.6 mm to 1 mm" in headers[0].DerivationDescription
    plain = read_back(write_dicom_series(tmp_path / "plain", thin_volume(), thin_affine, SYNTHETIC))[0][0]
    assert "SourceImageSequence" not in plain and "resampled" not in plain.DerivationDescription


def test_the_optional_marker_burns_synthetic_into_a_corner_and_says_so(tmp_path: Path) -> None:
    array = np.random.default_rng(5).integers(-1024, 1500, size=(3, 128, 160)).astype(np.int16)
    plain = read_back(write_dicom_series(tmp_path / "plain", array, np.eye(4), SYNTHETIC))[0]
    assert plain[0].BurnedInAnnotation == "NO"
    headers = read_back(
        write_dicom_series(tmp_path / "marked", array, np.eye(4), SYNTHETIC, burn_in_marker=True)
    )[0]
    assert headers[0].BurnedInAnnotation == "YES"
    pixels = np.stack([d.pixel_array for d in headers])
    changed = pixels != array
    assert changed.any() and (pixels[changed] == array.max()).all()  # the brightest value of the volume
    rows, columns = np.nonzero(changed.any(axis=0))
    assert rows.max() < array.shape[1] // 4 and columns.max() < array.shape[2] // 2  # the top left corner
    np.testing.assert_array_equal(changed[0], changed[-1])  # the same mark on every slice
    mark = dicom_io.synthetic_marker((512, 512))
    assert 0 < mark.mean() < 0.02 and not mark[256:].any() and not mark[:, 300:].any()


def test_series_contrast_and_patient_attributes_of_the_source_are_kept(tmp_path: Path) -> None:
    paths, _ = oblique_series(tmp_path / "in")
    for path in paths:  # a contrast study of a paired organ, as a GE scanner writes it
        header = pydicom.dcmread(path)
        header.Laterality = ""  # type 2C, present and empty
        header.ContrastBolusAgent, header.ContrastBolusRoute = "Oral & IV", "IV"
        header.ContrastBolusVolume, header.ContrastBolusStartTime = 100, "101530"
        header.LongitudinalTemporalInformationModified = "UNMODIFIED"
        header.ProtocolName, header.OperatorsName = "5.3 ABD/PEL", "Tech^A"
        header.save_as(path)
    source = read_volume(tmp_path / "in").dicom
    first = read_back(write_dicom_series(tmp_path / "out", thin_volume(), np.eye(4), SYNTHETIC, source))[0][0]
    assert "Laterality" in first and first.Laterality in ("", None)
    assert (first.ContrastBolusAgent, first.ContrastBolusRoute) == ("Oral & IV", "IV")
    assert (float(first.ContrastBolusVolume), first.ContrastBolusStartTime) == (100.0, "101530")
    assert first.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert (first.ProtocolName, str(first.OperatorsName)) == ("5.3 ABD/PEL", "Tech^A")
    assert (
        "ContrastBolusAgent"
        not in read_back(write_dicom_series(tmp_path / "plain", thin_volume(), np.eye(4), SYNTHETIC))[0][0]
    )  # nothing is invented for a source without contrast


def test_acquisition_attributes_are_copied_from_the_source_or_left_empty(tmp_path: Path) -> None:
    oblique_series(tmp_path / "in")
    source = read_volume(tmp_path / "in").dicom
    out = write_dicom_series(tmp_path / "plain", thin_volume(), np.eye(4), SYNTHETIC, source)
    first = read_back(out)[0][0]
    assert first.LossyImageCompression == "00"
    for keyword in ("KVP", "AcquisitionNumber"):  # Type 2 in the CT Image module: present, empty
        assert keyword in first and first[keyword].value in (None, "")

    source.header.KVP, source.header.AcquisitionNumber = "120", 3
    source.header.LossyImageCompression = "01"
    source.header.LossyImageCompressionRatio, source.header.LossyImageCompressionMethod = "10", "ISO_10918_1"
    out = write_dicom_series(tmp_path / "lossy", thin_volume(), np.eye(4), SYNTHETIC, source)
    first = read_back(out)[0][0]
    assert (float(first.KVP), int(first.AcquisitionNumber)) == (120.0, 3)
    assert first.LossyImageCompression == "01"  # once lossy, a derived image stays lossy
    assert (float(first.LossyImageCompressionRatio), first.LossyImageCompressionMethod) == (
        10.0,
        "ISO_10918_1",
    )

    del source.header.LossyImageCompression  # no value given, but a lossy JPEG transfer syntax
    source.header.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    out = write_dicom_series(tmp_path / "jpeg", thin_volume(), np.eye(4), SYNTHETIC, source)
    assert read_back(out)[0][0].LossyImageCompression == "01"

    out = write_dicom_series(tmp_path / "anonymous", thin_volume(), np.eye(4), SYNTHETIC)
    first = read_back(out)[0][0]
    assert first.LossyImageCompression == "00" and first.KVP in (None, "") and "AcquisitionNumber" in first


def test_a_series_is_written_into_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert write_dicom_series(".", thin_volume(), np.eye(4), SYNTHETIC) == Path(".")
    monkeypatch.chdir(tmp_path)  # the folder was replaced: leave the old one
    assert len(list(here.iterdir())) == 21
    np.testing.assert_array_equal(read_volume(here).array, thin_volume())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]  # no temporary folder left
    monkeypatch.chdir(here)
    write_volume(".", thin_volume(1), np.eye(4), out_format="dicom", overwrite=True)
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(read_volume(here).array, thin_volume(1))


def test_write_volume_writes_dicom_into_a_folder_path(tmp_path: Path) -> None:
    out = write_volume(f"{tmp_path / 'series'}/", thin_volume(), np.eye(4), synthetic=SYNTHETIC)
    assert out == tmp_path / "series" and len(list(out.iterdir())) == 21
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no temporary folder left


def test_existing_folders_are_replaced_only_when_asked_and_only_if_our_own_output(tmp_path: Path) -> None:
    out = write_dicom_series(tmp_path / "out", thin_volume(0), np.eye(4), SYNTHETIC)
    with pytest.raises(
        VolumeFileError, match="already exists and is not empty; choose a new or empty folder"
    ):
        write_volume(out, thin_volume(1), np.eye(4), out_format="dicom")
    with pytest.raises(VolumeFileError, match="already exists and is not empty"):
        write_dicom_series(out, thin_volume(1), np.eye(4), SYNTHETIC)  # the writer checks too
    write_volume(out, thin_volume(1), np.eye(4), out_format="dicom", overwrite=True)
    np.testing.assert_array_equal(read_volume(out).array, thin_volume(1))
    assert len(list(out.iterdir())) == 21 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    (out / "notes.txt").write_text("mine")
    with pytest.raises(VolumeFileError) as error:
        check_output_folder(None, out, overwrite=True)
    assert str(error.value).startswith(f"{out} holds notes.txt, a file that VolumetricSR did not write; ")
    assert str(error.value).endswith("choose another output folder")
    (out / "notes.txt").unlink()

    # a scanner's series (or any DICOM not written by VolumetricSR) is never replaced
    scanner = tmp_path / "scanner"
    paths = write_series(scanner, stored_values(), thick_positions(SHAPE[0], [0, 0, 5.0]))
    before = {path.name: path.read_bytes() for path in paths}
    for attempt in (
        lambda: write_volume(scanner, thin_volume(), np.eye(4), out_format="dicom", overwrite=True),
        lambda: write_dicom_series(scanner, thin_volume(), np.eye(4), SYNTHETIC, overwrite=True),
    ):
        with pytest.raises(VolumeFileError) as error:
            attempt()
        assert f"{scanner} holds slice" in str(error.value)
        assert "a DICOM file that VolumetricSR did not write" in str(error.value)
        assert "choose another output folder" in str(error.value)
    assert {path.name: path.read_bytes() for path in scanner.iterdir()} == before

    # one foreign DICOM file among our own output: refused as well
    ours = pydicom.dcmread(next(out.iterdir()))
    ours.Manufacturer = "ACME"  # derived, but by another program
    ours.save_as(out / "ZZZ.dcm")
    with pytest.raises(
        VolumeFileError, match=r"holds ZZZ\.dcm, a DICOM file that VolumetricSR did not write"
    ):
        check_output_folder(None, out, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_volume(empty, thin_volume(), np.eye(4), synthetic=SYNTHETIC) == empty
    assert len(list(empty.iterdir())) == 21


def test_output_folders_that_would_touch_the_input_are_refused(tmp_path: Path) -> None:
    oblique_series(tmp_path / "in")
    for output in (tmp_path / "in", tmp_path / "in" / "thin"):
        with pytest.raises(VolumeFileError, match="is the input DICOM folder or inside it"):
            check_output_folder(tmp_path / "in", output, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(VolumeFileError, match="is a file; give a new folder for the DICOM series"):
        check_output_folder(None, tmp_path / "file")
    with pytest.raises(VolumeFileError, match="does not exist; create it first"):
        check_output_folder(None, tmp_path / "missing" / "out")


def test_a_failed_write_leaves_nothing_and_float_voxels_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(VolumeFileError, match="a DICOM series stores int16 HU voxels, got float32"):
        write_dicom_series(tmp_path / "out", thin_volume().astype(np.float32), np.eye(4), SYNTHETIC)
    calls, save_as = [], Dataset.save_as

    def fail_on_the_third(self, path, **options):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        save_as(self, path, **options)

    monkeypatch.setattr(dicom_io.Dataset, "save_as", fail_on_the_third)
    with pytest.raises(VolumeFileError, match=r"cannot write .*out: No space left on device"):
        write_dicom_series(tmp_path / "out", thin_volume(), np.eye(4), SYNTHETIC)
    assert list(tmp_path.iterdir()) == []

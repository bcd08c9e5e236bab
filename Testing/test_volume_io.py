"""Volume files: NIfTI (nibabel), NRRD and MetaImage (SimpleITK) reading and writing, geometry
(RAS / LPS), what SimpleITK and Slicer's storage node read of our NRRD, output kinds, and refusals."""

from __future__ import annotations

import bz2
import gzip
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, shared_ct
from VolumetricSRLib.geometry import GeometryError, validate_affine
from VolumetricSRLib.io.volume_io import (
    VolumeFileError,
    check_output_path,
    output_format,
    read_geometry,
    read_volume,
    write_volume,
)

LPS = np.diag([-1.0, -1.0, 1.0])


def oblique_flipped_affine() -> np.ndarray:
    """A RAS affine with rotated, flipped axes, anisotropic spacing and an arbitrary origin."""
    angle = np.deg2rad(17.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    tilt = np.deg2rad(9.0)
    rotation = rotation @ np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(tilt), -np.sin(tilt)], [0.0, np.sin(tilt), np.cos(tilt)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, -0.65, -5.0])  # j and k flipped
    affine[:3, 3] = [-120.25, 87.5, -301.75]
    return affine


def sample_volume(dtype: type = np.int16) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(-1024, 2000, size=(6, 7, 9)).astype(dtype)  # (K, J, I), all sizes differ


def header_field(path: Path, name: str) -> str:
    """A field of a NRRD header, read straight from the file's bytes."""
    head = path.read_bytes()[:2000].split(b"\n\n", 1)[0].decode("latin-1")
    return re.search(rf"^{name}: (.*)$", head, flags=re.MULTILINE).group(1)


def vector_list(text: str) -> list[list[float]]:
    return [[float(v) for v in group.split(",")] for group in re.findall(r"\(([^)]*)\)", text)]


def write_nrrd_file(path: Path, header: list[str], payload: bytes) -> Path:
    path.write_bytes(("\n".join(["NRRD0005", *header]) + "\n\n").encode("ascii") + payload)
    return path


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["out.nii.gz", "out.nii"])
def test_nifti_round_trip_keeps_voxels_and_oblique_flipped_geometry(tmp_path: Path, name: str) -> None:
    array, affine = sample_volume(), oblique_flipped_affine()
    path = write_volume(tmp_path / name, array, affine)

    volume = read_volume(path)
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-5)  # NIfTI stores float32
    assert volume.path == path

    image = nib.load(path)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    np.testing.assert_allclose(image.header.get_qform(), affine, atol=1e-4)
    assert image.shape == (9, 7, 6)  # NIfTI is (I, J, K)
    assert image.get_fdata()[8, 2, 5] == array[5, 2, 8]
    assert image.header.get_xyzt_units()[0] == "mm"


def test_nrrd_round_trip_keeps_float64_geometry_and_is_stored_in_lps(tmp_path: Path) -> None:
    array, affine = sample_volume(), oblique_flipped_affine()
    path = write_volume(tmp_path / "out.nrrd", array, affine)

    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.array.dtype == np.int16
    # ITK keeps spacing and unit directions apart: composing them again costs at most an ulp or two
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-12)

    assert header_field(path, "space") == "left-posterior-superior"
    assert header_field(path, "encoding") == "gzip"
    assert header_field(path, "sizes") == "9 7 6"
    origin = vector_list(header_field(path, "space origin"))[0]
    assert origin == [120.25, -87.5, -301.75]  # LPS = (-R, -A, S)
    directions = np.array(vector_list(header_field(path, "space directions"))).T
    np.testing.assert_allclose(directions, LPS @ affine[:3, :3], rtol=0, atol=1e-12)


def test_our_nrrd_reads_back_in_simpleitk_with_the_same_geometry(tmp_path: Path) -> None:
    array, affine = sample_volume(), oblique_flipped_affine()
    path = write_volume(tmp_path / "out.nrrd", array, affine, synthetic={"model": "m1"})
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    np.testing.assert_allclose(image.GetSpacing(), np.linalg.norm(affine[:3, :3], axis=0), atol=1e-12)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction @ np.diag(image.GetSpacing()), LPS @ affine[:3, :3], atol=1e-12)
    np.testing.assert_array_equal(image.GetOrigin(), LPS @ affine[:3, 3])
    assert image.GetMetaData("VolumetricSR_synthetic") == "true"
    assert image.GetMetaData("VolumetricSR_model") == "m1"


def test_our_nrrd_reads_back_in_slicers_storage_node_with_the_same_geometry(tmp_path: Path) -> None:
    slicer = pytest.importorskip("slicer", reason="the MRML check needs the slicer-core wheel")
    import vtk

    array, affine = sample_volume(), oblique_flipped_affine()
    path = write_volume(tmp_path / "out.nrrd", array, affine)
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "read")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), affine, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)


@pytest.mark.parametrize("suffix", [".nhdr", ".mha", ".mhd"])
def test_detached_nrrd_and_metaimage_files_are_read_with_their_geometry(tmp_path: Path, suffix: str) -> None:
    array, affine = sample_volume(), oblique_flipped_affine()
    image = sitk.GetImageFromArray(array)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((LPS @ affine[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin((LPS @ affine[:3, 3]).tolist())
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-9)
    assert read_geometry(path)[0] == array.shape


def test_uncompressed_nrrd_round_trips_with_raw_data(tmp_path: Path) -> None:
    array, affine = sample_volume(), oblique_flipped_affine()
    raw = write_volume(tmp_path / "raw.nrrd", array, affine, compress=False)
    assert header_field(raw, "encoding") == "raw"
    assert raw.read_bytes().endswith(array.astype("<i2").tobytes())
    volume = read_volume(raw)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-12)
    gz = write_volume(tmp_path / "gz.nrrd", array, affine)
    np.testing.assert_array_equal(read_volume(gz).array, volume.array)


def test_synthetic_volumes_are_labelled_in_both_formats(tmp_path: Path) -> None:
    array, affine = sample_volume(), oblique_flipped_affine()
    label = {"model": "tvsrn-x5-publicct", "model_sha256": "ab" * 32, "source": "thick CT.nii.gz"}
    nifti = write_volume(tmp_path / "thin.nii.gz", array, affine, synthetic=label)
    header = nib.load(nifti).header
    assert header["descrip"].item().decode() == (
        "SYNTHETIC thin CT (VolumetricSR super-resolution), model tvsrn-x5-publicct"
    )
    assert header["intent_name"].item() == b"SYNTHETIC"
    np.testing.assert_array_equal(read_volume(nifti).array, array)

    nrrd = write_volume(tmp_path / "thin.nrrd", array, affine, synthetic=label)
    assert header_field(nrrd, "encoding") == "gzip"
    lines = nrrd.read_bytes().split(b"\n\n", 1)[0].decode().splitlines()
    assert sorted(line for line in lines if ":=" in line) == [  # ITK writes its dictionary sorted
        "VolumetricSR_description:=SYNTHETIC thin CT (VolumetricSR super-resolution), model "
        "tvsrn-x5-publicct",
        "VolumetricSR_model:=tvsrn-x5-publicct",
        f"VolumetricSR_model_sha256:={'ab' * 32}",
        "VolumetricSR_source:=thick CT.nii.gz",
        "VolumetricSR_synthetic:=true",
    ]
    volume = read_volume(nrrd)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, affine, rtol=0, atol=1e-12)

    plain = write_volume(tmp_path / "plain.nii", array, affine)
    assert nib.load(plain).header["descrip"].item() == b""  # only what a network made is labelled
    with pytest.raises(VolumeFileError, match="must be one line"):
        write_volume(tmp_path / "bad.nrrd", array, affine, synthetic={"source": "two\nlines"})
    assert not (tmp_path / "bad.nrrd").exists()


def test_geometry_comes_from_the_header_alone(tmp_path: Path) -> None:
    array, affine = sample_volume(), oblique_flipped_affine()
    for name in ("g.nii", "g.nrrd"):
        path = write_volume(tmp_path / name, array, affine)
        shape, read_affine = read_geometry(path)
        assert shape == array.shape
        np.testing.assert_array_equal(read_affine, read_volume(path).affine)
    nifti = tmp_path / "g.nii"
    nifti.write_bytes(nifti.read_bytes()[:400])  # the header survives, the voxels do not
    with pytest.raises(VolumeFileError):
        read_volume(nifti)
    assert read_geometry(nifti)[0] == array.shape
    four_d = tmp_path / "4d.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), np.eye(4)), four_d)
    with pytest.raises(VolumeFileError, match="not a single 3D volume"):
        read_geometry(four_d)


def test_float_volume_round_trips_through_both_formats(tmp_path: Path) -> None:
    array = sample_volume(np.float32) / 7.0
    for name in ("f.nii.gz", "f.nrrd"):
        volume = read_volume(write_volume(tmp_path / name, array, np.eye(4)))
        assert volume.array.dtype == np.float32
        np.testing.assert_array_equal(volume.array, array)


# ---------------------------------------------------------------- real files


def test_real_nrrd_ct64_shape_spacing_and_ras_origin() -> None:
    path = shared_ct("ChestImagingPlatform/ct-64.nrrd")
    volume = read_volume(path)
    assert volume.array.shape == (79, 64, 64)
    assert volume.array.dtype == np.int16
    np.testing.assert_allclose(volume.spacing, [4.171872, 4.171872, 3.9873417721518987])
    x, y, z = vector_list(header_field(path, "space origin"))[0]
    np.testing.assert_array_equal(volume.affine[:3, 3], [-x, -y, z])  # LPS -> RAS
    np.testing.assert_array_equal(np.diag(volume.affine)[:3], [-4.171872, -4.171872, 3.9873417721518987])
    assert -1100 < volume.array.min() < -900 and 900 < volume.array.max() < 3100  # air to bone, in HU


def test_real_nrrd_test_input_and_two_slice_crop() -> None:
    volume = read_volume(shared_ct("ChestImagingPlatform/TestInput.nrrd"))
    assert volume.array.shape == (50, 64, 64)
    np.testing.assert_allclose(volume.spacing, [5.2812480926513663, 5.2812480926513663, 6.9899997711181632])

    crop = read_volume(shared_ct("ChestImagingPlatform/crop_ct_2slices.nrrd"))
    assert crop.array.shape == (2, 349, 443)  # readable; too few slices is the predictor's refusal
    np.testing.assert_allclose(crop.spacing, [0.585938, 0.585938, 0.5])


def test_real_nifti_is_transposed_to_kji_with_the_ras_affine() -> None:
    path = shared_ct("TotalSegmentator/example_ct_sm.nii.gz")
    volume = read_volume(path)
    image = nib.load(path)
    assert volume.array.shape == (30, 101, 122)
    np.testing.assert_allclose(volume.spacing, [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(volume.affine, image.affine)
    data = np.asanyarray(image.dataobj)
    assert volume.array.dtype == data.dtype
    for i, j, k in [(0, 0, 0), (121, 100, 29), (60, 17, 11)]:
        assert volume.array[k, j, i] == data[i, j, k]


# ---------------------------------------------------------------- NRRD variants


def test_nrrd_raw_big_endian_double_in_ras_space(tmp_path: Path) -> None:
    values = np.arange(2 * 3 * 4, dtype=np.float64).reshape(4, 3, 2) - 5.5
    path = write_nrrd_file(
        tmp_path / "ras.nrrd",
        [
            "type: double",
            "dimension: 3",
            "space: RAS",
            "sizes: 2 3 4",
            "space directions: (0, 1.5, 0) (2,0,0) (0,0,-3)",
            "endian: big",
            "encoding: raw",
            "space origin: (10,20,30)",
            "my key:=a value: with colon",
        ],
        values.astype(">f8").tobytes(),
    )
    volume = read_volume(path)
    assert volume.array.dtype == np.float64
    np.testing.assert_array_equal(volume.array, values)
    expected = np.array([[0.0, 2.0, 0.0, 10.0], [1.5, 0.0, 0.0, 20.0], [0.0, 0.0, -3.0, 30.0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(volume.affine, expected)  # RAS is taken as is


def test_nrrd_ascii_with_line_skip_is_read_and_bzip2_refused(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.uint8).reshape(4, 3, 2)
    common = [
        "type: uchar",
        "dimension: 3",
        "sizes: 2 3 4",
        "space: LPS",
        "space directions: (1,0,0) (0,1,0) (0,0,2)",
    ]
    bzipped = write_nrrd_file(
        tmp_path / "b.nrrd", [*common, "encoding: bzip2"], bz2.compress(values.tobytes())
    )
    text = " ".join(str(v) for v in values.ravel()).encode()
    ascii_file = write_nrrd_file(
        tmp_path / "a.nrrd", [*common, "encoding: ascii", "line skip: 1"], b"skip me\n" + text
    )
    volume = read_volume(ascii_file)
    np.testing.assert_array_equal(volume.array, values)
    np.testing.assert_array_equal(np.diag(volume.affine), [-1.0, -1.0, 2.0, 1.0])
    with pytest.raises(VolumeFileError, match=r"cannot read b.nrrd: .*bzip2 encoding not available"):
        read_volume(bzipped)  # ITK (and so Slicer) has no bzip2: the message says what ITK lacks


def test_nrrd_with_one_volume_on_a_list_axis_is_squeezed(tmp_path: Path) -> None:
    values = np.arange(24, dtype=np.int16).reshape(4, 3, 2, 1)
    path = write_nrrd_file(
        tmp_path / "list.nrrd",
        [
            "type: short",
            "dimension: 4",
            "space: left-posterior-superior",
            "sizes: 1 2 3 4",
            "space directions: none (1,0,0) (0,1,0) (0,0,1)",
            "kinds: list domain domain domain",
            "endian: little",
            "encoding: gzip",
        ],
        gzip.compress(values.astype("<i2").tobytes()),
    )
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, values[..., 0])


def test_nrrd_without_space_directions_reads_but_reports_missing_spacing(tmp_path: Path) -> None:
    values = np.zeros((5, 4, 3), dtype=np.int16)
    path = write_nrrd_file(
        tmp_path / "plain.nrrd",
        ["type: short", "dimension: 3", "sizes: 3 4 5", "endian: little", "encoding: raw"],
        values.tobytes(),
    )
    volume = read_volume(path)
    assert volume.array.shape == (5, 4, 3)
    np.testing.assert_array_equal(volume.spacing, [0.0, 0.0, 0.0])
    with pytest.raises(GeometryError, match="spacing is missing"):
        validate_affine(volume.affine)


def test_nrrd_with_only_spacings_gets_an_axis_aligned_lps_grid(tmp_path: Path) -> None:
    values = np.zeros((5, 4, 3), dtype=np.int16)
    path = write_nrrd_file(
        tmp_path / "spacings.nrrd",
        [
            "type: short",
            "dimension: 3",
            "sizes: 3 4 5",
            "spacings: 0.5 0.5 2.5",
            "endian: little",
            "encoding: raw",
        ],
        values.tobytes(),
    )
    np.testing.assert_array_equal(np.diag(read_volume(path).affine), [-0.5, -0.5, 2.5, 1.0])


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        (["data file: ct.raw"], b"", r'couldn\'t open ".*ct\.raw" \(data file 1 of 1\)'),
        (["space: nowhere"], b"\x00" * 48, 'couldn\'t parse space "nowhere"'),
        (["encoding: hex"], b"\x00" * 48, "hit invalid character"),
        (["type: block"], b"", "type is block, but missing field: block size"),
        (["encoding: raw"], b"\x00" * 10, "fread got only 5 2-sized things, not 24"),
        (["encoding: gzip"], b"not gzip data at all", "expected 48 bytes but received 20"),
        (["space directions: (1,0) (0,1,0) (0,0,1)"], b"", "parsed 2 values, but space dimension is 3"),
    ],
)
def test_bad_nrrd_files_are_refused_with_the_reason(
    tmp_path: Path, header: list[str], payload: bytes, message: str
) -> None:
    fields = {
        "type": "short",
        "dimension": "3",
        "sizes": "2 3 4",
        "space": "left-posterior-superior",
        "space directions": "(1,0,0) (0,1,0) (0,0,1)",
        "endian": "little",
        "encoding": "raw",
    }
    for line in header:
        name, value = line.split(": ", 1)
        fields[name] = value
    path = write_nrrd_file(tmp_path / "bad.nrrd", [f"{k}: {v}" for k, v in fields.items()], payload)
    with pytest.raises(VolumeFileError) as refused:
        read_volume(path)
    assert str(refused.value).startswith("cannot read bad.nrrd: the file is unreadable or corrupt (")
    assert re.search(message, str(refused.value))
    assert str(refused.value).endswith("; check the file, or save it again (e.g. from 3D Slicer)")


def test_a_file_that_is_not_nrrd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.nrrd"
    path.write_bytes(b"P6\n3 2\n255\n" + bytes(18))
    with pytest.raises(
        VolumeFileError, match=r'unreadable or corrupt .Unable to determine ImageIO reader for "'
    ):
        read_volume(path)


def test_real_nrrd_origin_is_simpleitks_lps_origin_in_ras() -> None:
    path = shared_ct("ChestImagingPlatform/crop_ct_2slices.nrrd")
    assert header_field(path, "encoding") == "raw"
    np.testing.assert_allclose(sitk.ReadImage(str(path)).GetOrigin(), [-123.441356, -302.975712, -102.0])
    np.testing.assert_allclose(read_volume(path).affine[:3, 3], [123.441356, 302.975712, -102.0])


# ---------------------------------------------------------------- refused inputs


def test_missing_unknown_and_folder_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VolumeFileError, match="file not found"):
        read_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(VolumeFileError, match=r"unsupported file type; use one of .nii, .nii.gz, .nrrd"):
        read_volume(tmp_path / "image.png")
    (tmp_path / "image.nhdr").write_text("NRRD0004\n")
    with pytest.raises(VolumeFileError, match=r'cannot read image.nhdr: .*no "data file" given'):
        read_volume(tmp_path / "image.nhdr")
    with pytest.raises(VolumeFileError, match="is a folder without DICOM files"):
        read_volume(tmp_path)
    with pytest.raises(VolumeFileError, match=r"a series .1.2.3. was chosen, but image.nhdr is a file"):
        read_volume(tmp_path / "image.nhdr", series="1.2.3")


def test_truncated_and_garbage_nifti_are_refused(tmp_path: Path) -> None:
    source = write_volume(tmp_path / "whole.nii.gz", sample_volume(), np.eye(4)).read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(source[: len(source) // 2])
    with pytest.raises(VolumeFileError, match="unreadable or corrupt"):
        read_volume(truncated)
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"this is not an image" * 30)
    with pytest.raises(VolumeFileError, match="unreadable or corrupt"):
        read_volume(garbage)


@pytest.mark.parametrize("shape", [(9, 7), (9, 7, 1), (9, 1, 6)])
def test_2d_nifti_is_refused(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.int16), np.eye(4)), path)
    with pytest.raises(VolumeFileError, match="2D image"):
        read_volume(path)


def test_4d_nifti_with_several_volumes_is_refused_and_with_one_is_read(tmp_path: Path) -> None:
    several = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((9, 7, 6, 3), dtype=np.int16), np.eye(4)), several)
    with pytest.raises(VolumeFileError, match="holds 3 volumes"):
        read_volume(several)
    single = tmp_path / "single.nii.gz"
    data = sample_volume().transpose(2, 1, 0)[..., None]
    nib.save(nib.Nifti1Image(data, np.eye(4)), single)
    np.testing.assert_array_equal(read_volume(single).array, sample_volume())


def test_nrrd_with_several_volumes_is_refused(tmp_path: Path) -> None:
    header = [
        "type: uchar",
        "dimension: 4",
        "space: LPS",
        "sizes: 3 2 3 4",
        "space directions: none (1,0,0) (0,1,0) (0,0,1)",
        "encoding: raw",
    ]
    path = write_nrrd_file(
        tmp_path / "vectors.nrrd", [*header, "kinds: vector domain domain domain"], bytes(72)
    )
    with pytest.raises(VolumeFileError, match="holds 3 volumes or components per voxel; give a single 3D"):
        read_volume(path)
    path = write_nrrd_file(tmp_path / "unkinded.nrrd", header, bytes(72))  # ITK needs the axis kinds
    with pytest.raises(VolumeFileError, match=r"number of domain axes in the NRRD file .4. doesn't match"):
        read_volume(path)


# ---------------------------------------------------------------- safe writing


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "out.nrrd"
    path.write_bytes(b"precious")
    with pytest.raises(VolumeFileError, match="already exists"):
        write_volume(path, sample_volume(), np.eye(4))
    assert path.read_bytes() == b"precious"
    write_volume(path, sample_volume(), np.eye(4), overwrite=True)
    np.testing.assert_array_equal(read_volume(path).array, sample_volume())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nrrd"]


def test_output_equal_to_input_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    source = write_volume(tmp_path / "in.nii.gz", sample_volume(), np.eye(4))
    before = source.read_bytes()
    for alias in (source, tmp_path / "." / "in.nii.gz"):
        with pytest.raises(VolumeFileError, match="is the input file"):
            check_output_path(source, alias, overwrite=True)
        with pytest.raises(VolumeFileError, match="is the input file"):
            write_volume(alias, np.zeros((2, 2, 2), np.int16), np.eye(4), overwrite=True, input_path=source)
    assert source.read_bytes() == before


def test_output_checks_name_type_and_folder(tmp_path: Path) -> None:
    assert check_output_path(None, tmp_path / "ok.nii.gz") == tmp_path / "ok.nii.gz"
    with pytest.raises(VolumeFileError, match="unsupported file type"):
        check_output_path(None, tmp_path / "out.png")
    with pytest.raises(VolumeFileError, match=r"out.mha: unsupported file type for an output"):
        check_output_path(None, tmp_path / "out.mha")
    with pytest.raises(VolumeFileError, match="does not exist"):
        check_output_path(None, tmp_path / "missing" / "out.nrrd")
    (tmp_path / "dir.nrrd").mkdir()
    with pytest.raises(VolumeFileError, match=r"is a folder; give a file name ending in .nii.gz or .nrrd"):
        check_output_path(None, tmp_path / "dir.nrrd", overwrite=True)


@pytest.mark.parametrize("name", ["bad.nrrd", "bad.nii.gz"])
def test_a_failed_write_leaves_no_file_behind(tmp_path: Path, name: str) -> None:
    with pytest.raises(VolumeFileError, match="cannot store"):
        write_volume(tmp_path / name, np.zeros((3, 3, 3), dtype=bool), np.eye(4))
    assert list(tmp_path.iterdir()) == []


def test_bad_arrays_and_affines_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VolumeFileError, match="only 3D"):
        write_volume(tmp_path / "a.nii.gz", np.zeros((3, 3), np.int16), np.eye(4))
    affine = np.eye(4)
    affine[0, 0] = np.nan
    with pytest.raises(VolumeFileError, match="finite 4 x 4"):
        write_volume(tmp_path / "a.nii.gz", np.zeros((3, 3, 3), np.int16), affine)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- output kinds and a light import


def test_the_output_kind_comes_from_the_extension_a_folder_or_the_format(tmp_path: Path) -> None:
    (tmp_path / "series").mkdir()
    (tmp_path / "dir.nrrd").mkdir()
    assert output_format(tmp_path / "a.nii.gz") == output_format(tmp_path / "a.NII") == "nifti"
    assert output_format(tmp_path / "a.nrrd") == output_format(tmp_path / "dir.nrrd") == "nrrd"
    assert output_format(tmp_path / "series") == "dicom"  # an existing folder
    assert output_format(f"{tmp_path / 'new'}/") == "dicom"  # a folder to be made
    assert output_format(tmp_path / "anything.nii.gz", "dicom") == "dicom"
    with pytest.raises(VolumeFileError, match=r"new: unsupported file type for an output; .*ending in '/'"):
        output_format(tmp_path / "new")
    with pytest.raises(VolumeFileError, match="unknown output format 'png'; use one of auto, dicom"):
        output_format(tmp_path / "a.nii", "png")


def test_importing_volume_io_loads_no_simpleitk_pydicom_nibabel_or_torch() -> None:
    """Slicer's GUI process imports volume_io: the heavy readers wait until a file needs them."""
    check = (
        "import sys; import VolumetricSRLib.io.volume_io; "
        "print(sorted({'SimpleITK', 'pydicom', 'nibabel', 'torch'} & set(sys.modules)))"
    )
    env = {"PYTHONPATH": str(REPO / "VolumetricSR")}
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"


def test_the_lps_to_ras_flip_is_defined_once_and_used_by_dicom_io() -> None:
    from VolumetricSRLib.io import dicom_io, volume_io

    np.testing.assert_array_equal(volume_io.LPS_TO_RAS, LPS)
    assert dicom_io.LPS_TO_RAS is volume_io.LPS_TO_RAS
    assert not hasattr(dicom_io, "_LPS_TO_RAS") and not hasattr(volume_io, "_LPS_TO_RAS")

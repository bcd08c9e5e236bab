"""The `volumetricsr` command line: predict on a phantom, on DICOM series (in and out) and on real CT,
summary, and every refused input."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from dicom_series import LPS, write_series

from conftest import shared_ct
from VolumetricSRLib.app import cli as cli_module
from VolumetricSRLib.app.cli import build_parser, main, parameter_parts
from VolumetricSRLib.app.cli_common import progress_bar, show_progress
from VolumetricSRLib.geometry import thin_grid
from VolumetricSRLib.inference.predictor import PredictOptions, bf16_cpu_supported, super_resolve_hu
from VolumetricSRLib.intensity import to_int16_hu
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models import model_cards
from VolumetricSRLib.models.architectures import REGISTRY
from VolumetricSRLib.models.network_config import PAPER_PARAMETERS, SIZES
from VolumetricSRLib.models.networks import build_network
from VolumetricSRLib.models.thin_slice_network import count_parameters
from VolumetricSRLib.models.tvsrn import TVSRN, VARIANTS, TVSRNConfig
from VolumetricSRLib.models.weights import load_model, save_model
from VolumetricSRLib.phantom import chest_phantom, simulate_thick

# residual output: thin slice 5k stays near thick slice k, so results can be checked against the input
TINY = TVSRNConfig.tiny(output="residual")
WINDOW = (-1000.0, 1000.0)  # not the default window: proves the card's window is used


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny trained model (tiny.json) and an untrained one (scratch.json)."""
    directory = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = TVSRN(TINY)
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # away from the initial (identity-like) weights
            parameter.add_((2e-4 if name.startswith("head") else 0.05) * torch.randn_like(parameter))
    save_model(model, directory, id="tiny", name="Tiny", trained=True, intensity_window=WINDOW)
    save_model(TVSRN(TINY), directory, id="scratch", name="Scratch", trained=False)
    return directory


def thick_phantom() -> tuple[np.ndarray, np.ndarray]:
    """6 thick slices of 5 mm, 32 x 32 (int16 HU from -1000, RAS affine), simulated from the chest phantom."""
    thin, affine = chest_phantom(shape=(30, 32, 32), pixel_mm=1.5)
    thick, thick_affine = simulate_thick(thin, affine, 5)
    return np.clip(np.rint(thick), -1000, None).astype(np.int16), thick_affine


@pytest.fixture
def small_ct(tmp_path: Path) -> Path:
    """The thick phantom as NIfTI in tmp_path/in."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    return write_volume(inputs / "small.nii.gz", *thick_phantom())


def write_dicom_phantom(folder: Path, **options) -> Path:
    """The thick phantom as a DICOM CT series (stored value = HU + 1024, intercept -1024)."""
    hu, affine = thick_phantom()
    lps = LPS @ affine[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    positions = lps[:, 3] + np.outer(np.arange(hu.shape[0]), lps[:, 2])
    row, col = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    write_series(
        folder, (hu + 1024).astype(np.uint16), positions, row, col, (spacing[1], spacing[0]), **options
    )
    return folder


@pytest.fixture
def dicom_ct(tmp_path: Path) -> Path:
    """The thick phantom as a DICOM series in tmp_path/dicom."""
    return write_dicom_phantom(tmp_path / "dicom", series_uid="1.2.826.7.1")


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, message: str, folder: Path, before: list[str]) -> None:
    """Exit code 2, one plain error line naming the problem, and the output folder untouched."""
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert message in errors[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == before  # no output, no temporary file


def with_spacing(path: Path, destination: Path, slice_mm: float) -> Path:
    volume = read_volume(path)
    affine = volume.affine.copy()
    affine[:3, 2] *= slice_mm / np.linalg.norm(affine[:3, 2])
    return write_volume(destination, volume.array, affine)


# ---------------------------------------------------------------- predict on real CT


def test_predict_real_nifti_writes_the_thin_grid(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    isotropic = shared_ct("TotalSegmentator/example_ct_sm.nii.gz")  # 3 mm voxels: no slice axis to thin
    code, _, err = cli(
        capsys, "predict", isotropic, tmp_path / "thin.nii.gz", "--model", models / "tiny.json"
    )
    assert_refused(code, err, "no clear slice axis: its voxels are 3 x 3 x 3 mm (i x j x k)", tmp_path, [])

    source = with_spacing(isotropic, tmp_path / "five_mm.nii.gz", 5.0)  # the same voxels as 5 mm slices
    output = tmp_path / "thin.nii.gz"
    code, out, err = cli(
        capsys, "predict", source, output, "--model", models / "tiny.json", "--device", "cpu"
    )
    assert code == 0, err
    assert "error" not in err

    thick = read_volume(source)
    thin = read_volume(output)
    assert thick.array.shape == (30, 101, 122)
    assert thin.array.shape == ((30 - 1) * 5 + 1, 101, 122)
    assert thin.array.dtype == np.int16
    np.testing.assert_allclose(thin.affine, thin_grid(thick.affine, 30, 5).affine, rtol=0, atol=1e-5)
    image = nib.load(output)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    assert image.header["descrip"].item().decode().startswith("SYNTHETIC thin CT")
    assert image.header["intent_name"].item() == b"SYNTHETIC"

    assert thin.array.min() == WINDOW[0] and thin.array.max() <= WINDOW[1]  # the card's window clips air
    on_thick = thin.array[::5].astype(np.float32) - np.clip(thick.array, *WINDOW)
    assert np.abs(on_thick).mean() < 10 and np.abs(on_thick).max() < 30  # thin slice 5k lies on thick slice k

    assert f"wrote {output}: 122 x 101 x 146 voxels, spacing 3.000 x 3.000 x 1.000 mm" in out
    assert "super-resolved 30 -> 146 slices in " in out and " s on cpu (" in out
    assert "consistency with the measured slices: mean |re-thickened - measured|" in out
    peak = re.search(r"peak memory \(resident\): ([0-9.]+) GiB", out)
    assert peak is not None and 0.05 < float(peak.group(1)) < 64


def test_predict_real_nrrd_to_nrrd_resamples_to_the_cards_thin_spacing(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    source = shared_ct("ChestImagingPlatform/TestInput.nrrd")  # 50 slices 6.99 mm apart, 5.28 mm pixels
    output = tmp_path / "thin.nrrd"
    code, out, err = cli(
        capsys, "predict", source, output, "--model", models / "tiny.safetensors", "--device", "cpu"
    )
    assert code == 0, err

    thick = read_volume(source)
    thin = read_volume(output)
    slice_mm = float(np.linalg.norm(thick.affine[:3, 2]))
    slices = int(np.floor(49 * slice_mm / 1.0 + 1e-6)) + 1  # 1 mm apart, none beyond the last input slice
    assert thin.array.shape == (slices, 64, 64)
    expected = thick.affine.copy()
    expected[:3, 2] /= slice_mm  # 1 mm steps along the slice axis, from the first input slice
    np.testing.assert_allclose(thin.affine, expected, rtol=0, atol=1e-9)
    assert f"64 x 64 x {slices} voxels" in out
    assert f"slices resampled: cubic B-spline from {slice_mm / 5:.4g} mm to 1 mm" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thin.nrrd"]


def test_real_ct_without_a_clear_slice_axis_is_refused(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    source = shared_ct("ChestImagingPlatform/ct-64.nrrd")  # 4.17 x 4.17 x 3.99 mm: two axes equally coarse
    code, _, err = cli(capsys, "predict", source, tmp_path / "thin.nrrd", "--model", models / "tiny.json")
    assert_refused(code, err, "no clear slice axis: its voxels are 4.17 x 4.17 x 3.99 mm", tmp_path, [])


def test_predict_passes_the_options_and_the_card_window_to_the_predictor(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "thin.nii"
    options = ["--tile", 18, "--overlap", 5, "--batch", 3, "--depth-overlap", 2]
    code, _, err = cli(capsys, "predict", small_ct, output, "--model", models / "tiny.json", *options)
    assert code == 0, err

    thick = read_volume(small_ct)
    model, _ = load_model(models / "tiny.json")
    same = PredictOptions(device="cpu", tile=18, tile_overlap=5, batch=3, depth_overlap=2)
    expected, affine = super_resolve_hu(model, thick.array, thick.affine, same, window=WINDOW)
    thin = read_volume(output)
    np.testing.assert_array_equal(thin.array, to_int16_hu(expected))
    np.testing.assert_allclose(thin.affine, affine, rtol=0, atol=1e-5)
    whole = super_resolve_hu(model, thick.array, thick.affine, PredictOptions(device="cpu"), window=WINDOW)[0]
    assert not np.array_equal(to_int16_hu(whole), thin.array)  # the options did change the computation


def test_predict_passes_the_authors_depth_blend_and_cpu_bfloat16(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "thin.nii"
    options = ["--depth-overlap", 2, "--depth-blend", "center", "--device", "cpu"]
    code, _, err = cli(capsys, "predict", small_ct, output, "--model", models / "tiny.json", *options)
    assert code == 0, err
    thick = read_volume(small_ct)
    model, _ = load_model(models / "tiny.json")
    same = PredictOptions(device="cpu", depth_overlap=2, depth_blend="center")
    expected, _ = super_resolve_hu(model, thick.array, thick.affine, same, window=WINDOW)
    np.testing.assert_array_equal(read_volume(output).array, to_int16_hu(expected))

    bf16 = ["--cpu-bf16", "--device", "cpu", "--overwrite"]
    code, _, err = cli(capsys, "predict", small_ct, output, "--model", models / "tiny.json", *bf16)
    if bf16_cpu_supported():
        assert code == 0, err
        exact, _ = super_resolve_hu(model, thick.array, thick.affine, PredictOptions("cpu"), window=WINDOW)
        assert np.abs(read_volume(output).array - exact).mean() < 20
    else:
        assert code == 2 and "no native bfloat16" in err


def test_predict_replaces_an_existing_output_only_with_overwrite(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "thin.nrrd"
    output.write_bytes(b"earlier result")
    argv = ["predict", small_ct, output, "--model", models / "tiny.json", "--device", "cpu"]
    code, _, err = cli(capsys, *argv)
    assert_refused(code, err, "already exists", tmp_path, ["in", "thin.nrrd"])
    assert output.read_bytes() == b"earlier result"
    code, _, err = cli(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert read_volume(output).array.shape == (26, 32, 32)


def test_predict_warns_about_an_unusual_slice_spacing(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    source = with_spacing(small_ct, tmp_path / "in" / "twelve_mm.nii.gz", 12.0)
    code, _, err = cli(capsys, "predict", source, tmp_path / "thin.nii.gz", "--model", models / "tiny.json")
    assert code == 0, err
    assert "warning: input slices are 12 mm apart but the model was trained on 5 mm slices" in err
    assert (tmp_path / "thin.nii.gz").exists()


def test_untrained_weights_need_allow_untrained_and_are_flagged(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "thin.nii.gz"
    argv = ["predict", small_ct, output, "--model", models / "scratch.json", "--device", "cpu"]
    code, _, err = cli(capsys, *argv)
    assert_refused(code, err, "holds untrained weights, it is not a model", tmp_path, ["in"])
    code, _, err = cli(capsys, *argv, "--allow-untrained")
    assert code == 0, err
    assert "warning: scratch holds untrained weights" in err
    assert output.exists()


# ---------------------------------------------------------------- DICOM in and out


def read_dicom_back(folder: Path) -> tuple[list[pydicom.Dataset], sitk.Image]:
    headers = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: int(d.InstanceNumber))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return headers, reader.Execute()


def test_predict_dicom_series_to_nifti_and_to_a_dicom_series_that_agree(
    tmp_path: Path, dicom_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    model = ["--model", models / "tiny.json", "--device", "cpu"]
    nifti, series = tmp_path / "thin.nii.gz", tmp_path / "thin"
    code, out, err = cli(capsys, "predict", dicom_ct, nifti, *model)
    assert code == 0, err
    code, out, err = cli(capsys, "predict", dicom_ct, f"{series}/", *model)
    assert code == 0, err
    assert f"wrote {series}: 32 x 32 x 26 voxels, spacing 1.500 x 1.500 x 1.000 mm" in out

    thick, thin = read_volume(dicom_ct), read_volume(nifti)
    np.testing.assert_allclose(thick.affine, thick_phantom()[1], atol=1e-9)  # the series' own geometry
    np.testing.assert_array_equal(thick.array, thick_phantom()[0])  # HU: the intercept applied
    np.testing.assert_allclose(thin.affine, thin_grid(thick.affine, 6, 5).affine, atol=1e-5)
    headers, image = read_dicom_back(series)
    np.testing.assert_array_equal(np.stack([d.pixel_array for d in headers]), thin.array)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), thin.array)
    np.testing.assert_array_equal(read_volume(series).array, thin.array)
    np.testing.assert_allclose(read_volume(series).affine, thin.affine, atol=1e-5)
    spacing = np.array(image.GetSpacing())
    np.testing.assert_allclose(
        LPS @ np.array(image.GetDirection()).reshape(3, 3) * spacing, thin.affine[:3, :3], atol=1e-5
    )
    np.testing.assert_allclose(LPS @ np.array(image.GetOrigin()), thin.affine[:3, 3], atol=1e-5)

    source = pydicom.dcmread(next(dicom_ct.iterdir()))
    first = headers[0]
    assert first.StudyInstanceUID == source.StudyInstanceUID and first.PatientID == "P-0042"
    assert first.SeriesInstanceUID != source.SeriesInstanceUID
    assert first.SeriesDescription == "SYNTHETIC thin CT VolumetricSR tiny"
    assert (
        f"model tiny, weights sha256 {load_model(models / 'tiny.json')[1].sha256}"
        in first.DerivationDescription
    )
    assert "from series 1.2.826.7.1;" in first.DerivationDescription
    assert "super-resolved by VolumetricSR (TVSRN) model tiny," in first.DerivationDescription
    assert list(first.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom", "thin", "thin.nii.gz"]


def test_a_folder_with_two_series_is_listed_and_series_chooses(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "study"
    write_dicom_phantom(folder / "a", series_uid="1.2.826.7.1", description="chest 5 mm")
    write_dicom_phantom(folder / "b", series_uid="1.2.826.7.2", description="chest again")
    argv = ["predict", folder, tmp_path / "thin.nii.gz", "--model", models / "tiny.json", "--device", "cpu"]
    code, _, err = cli(capsys, *argv)
    assert_refused(code, err, "holds 2 CT series; choose one with --series UID:", tmp_path, ["study"])
    assert "  1.2.826.7.1: 'chest 5 mm', CT, 6 slices, 1.5 x 1.5 x 5 mm" in err.splitlines()
    assert "  1.2.826.7.2: 'chest again', CT, 6 slices, 1.5 x 1.5 x 5 mm" in err.splitlines()
    code, _, err = cli(capsys, *argv, "--series", "1.2.826.7.2")
    assert code == 0, err
    assert read_volume(tmp_path / "thin.nii.gz").array.shape == (26, 32, 32)


def test_bad_dicom_folders_are_refused_without_output(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    model = ["--model", models / "tiny.json", "--device", "cpu"]
    hu, affine = thick_phantom()
    lps = LPS @ affine[:3]
    positions = lps[:, 3] + np.outer([0, 1, 2, 4, 5, 6], lps[:, 2])  # slice 3 is missing
    write_series(tmp_path / "gap", (hu + 1024).astype(np.uint16), positions, series_uid="3.1")
    code, _, err = cli(capsys, "predict", tmp_path / "gap", f"{tmp_path / 'out'}/", *model)
    assert_refused(code, err, "series 3.1 misses 1 slice(s): a gap of 10 mm after slice 3", tmp_path, ["gap"])

    write_dicom_phantom(tmp_path / "mr", modality="MR", series_uid="3.2")
    code, _, err = cli(capsys, "predict", tmp_path / "mr", tmp_path / "out.nii.gz", *model)
    assert_refused(code, err, "series 3.2 in", tmp_path, ["gap", "mr"])
    assert "is MR (thick 5 mm), not CT" in err

    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "predict", tmp_path / "empty", tmp_path / "out.nii.gz", *model)
    assert_refused(code, err, "is a folder without DICOM files", tmp_path, ["empty", "gap", "mr"])


def test_a_volume_file_to_dicom_is_anonymous_and_says_so(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "series.nii.gz"  # any name: --format decides
    code, _, err = cli(capsys, "predict", small_ct, out, "--format", "dicom", "--model", models / "tiny.json")
    assert code == 0, err
    assert "warning: the input is not DICOM, so the series in" in err and "new anonymous patient" in err
    headers, _ = read_dicom_back(out)
    assert len(headers) == 26 and str(headers[0].PatientName) == "Anonymous"
    assert "from file small.nii.gz;" in headers[0].DerivationDescription

    code, _, err = cli(capsys, "predict", small_ct, out, "--format", "dicom", "--model", models / "tiny.json")
    assert_refused(code, err, "already exists and is not empty", tmp_path, ["in", "series.nii.gz"])
    code, _, err = cli(
        capsys, "predict", small_ct, out, "--format", "dicom", "--model", models / "tiny.json", "--overwrite"
    )
    assert code == 0, err


def test_a_baseline_model_is_named_by_its_label_in_the_series_and_the_help_says_any_model(
    tmp_path: Path, small_ct: Path, capsys: pytest.CaptureFixture
) -> None:
    torch.manual_seed(0)
    network = build_network(REGISTRY["mpunet"].config.tiny(output="residual").to_dict())
    card = save_model(network, tmp_path, id="mpunet-x5", name="MPU-Net", trained=True)
    model = ["--model", card, "--device", "cpu"]
    code, _, err = cli(capsys, "predict", small_ct, f"{tmp_path / 'series'}/", *model)
    assert code == 0, err
    headers, _ = read_dicom_back(tmp_path / "series")
    derivation = headers[0].DerivationDescription
    assert derivation.startswith(
        "SYNTHETIC: thin slices super-resolved by VolumetricSR (MPU-Net, L1 only) model mpunet"
    )
    assert "TVSRN" not in derivation
    nrrd = tmp_path / "thin.nrrd"
    assert cli(capsys, "predict", small_ct, nrrd, *model)[0] == 0
    assert "VolumetricSR_architecture:=MPU-Net, L1 only" in nrrd.read_bytes()[:4000].decode("latin-1")

    description = build_parser().description
    assert description.endswith("with the model (TVSRN by default).") and "with TVSRN" not in description
    assert "with the model, TVSRN by default" in cli_module.__doc__.splitlines()[0]


def test_a_dicom_series_is_written_into_the_current_folder(
    tmp_path: Path,
    small_ct: Path,
    models: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, out, err = cli(capsys, "predict", small_ct, ".", "--model", models / "tiny.json", "--device", "cpu")
    monkeypatch.chdir(tmp_path)  # the folder was replaced by the new series: leave the old one
    assert code == 0, err
    assert "wrote .: 32 x 32 x 26 voxels" in out
    assert read_volume(here).array.shape == (26, 32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "in"]


def test_real_head_dicom_with_coarser_pixels_than_slices_is_refused(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = shared_ct("Slicer/CTHeadAxialDicom")  # 3.2 mm pixels, 1.5 mm slices
    code, _, err = cli(
        capsys, "predict", folder, tmp_path / "head", "--format", "dicom", "--model", models / "tiny.json"
    )
    assert_refused(code, err, "no clear slice axis: its voxels are 3.2 x 3.2 x 1.5 mm", tmp_path, [])


# ---------------------------------------------------------------- refused inputs


def test_two_slice_real_nrrd_is_refused(tmp_path: Path, models: Path, capsys: pytest.CaptureFixture) -> None:
    source = shared_ct("ChestImagingPlatform/crop_ct_2slices.nrrd")  # 0.586 mm pixels, 0.5 mm slices
    code, _, err = cli(capsys, "predict", source, tmp_path / "thin.nrrd", "--model", models / "tiny.json")
    assert_refused(code, err, "no clear slice axis", tmp_path, [])
    volume = read_volume(source)
    affine = volume.affine @ np.diag([1.0, 1.0, 10.0, 1.0])  # 5 mm slices: then too few of them
    write_volume(tmp_path / "two.nrrd", volume.array, affine)
    code, _, err = cli(
        capsys, "predict", tmp_path / "two.nrrd", tmp_path / "thin.nrrd", "--model", models / "tiny.json"
    )
    assert_refused(code, err, "the model needs at least 4 slices, got 2", tmp_path, ["two.nrrd"])


def test_2d_image_is_refused(tmp_path: Path, models: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 1), dtype=np.int16), np.eye(4)), source)
    code, _, err = cli(capsys, "predict", source, tmp_path / "thin.nii.gz", "--model", models / "tiny.json")
    assert_refused(code, err, "slice.nii.gz is a 2D image (32 x 32 x 1 voxels)", tmp_path, ["slice.nii.gz"])


def test_missing_spacing_is_refused(tmp_path: Path, models: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "no_geometry.nrrd"
    header = "NRRD0004\ntype: short\ndimension: 3\nsizes: 16 16 6\nendian: little\nencoding: raw\n\n"
    source.write_bytes(header.encode() + np.zeros((6, 16, 16), "<i2").tobytes())
    code, _, err = cli(capsys, "predict", source, tmp_path / "thin.nrrd", "--model", models / "tiny.json")
    assert_refused(code, err, "spacing is missing or zero", tmp_path, ["no_geometry.nrrd"])


def test_slices_already_thin_are_refused(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    volume = read_volume(small_ct)
    fine = volume.affine @ np.diag([1 / 3, 1 / 3, 1 / 5, 1.0])  # 0.5 mm pixels, 1 mm slices
    source = write_volume(tmp_path / "in" / "one_mm.nii.gz", volume.array, fine)
    code, _, err = cli(capsys, "predict", source, tmp_path / "thin.nii.gz", "--model", models / "tiny.json")
    assert_refused(code, err, "already as thin as this model's output", tmp_path, ["in"])


def test_nan_values_are_refused(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    volume = read_volume(small_ct)
    values = volume.array.astype(np.float32)
    values[2, 5, 7] = np.nan
    values[3, 1, 1] = np.inf
    source = write_volume(tmp_path / "in" / "nan.nii.gz", values, volume.affine)
    code, _, err = cli(capsys, "predict", source, tmp_path / "thin.nii.gz", "--model", models / "tiny.json")
    assert_refused(code, err, "the volume has 2 NaN or infinite values", tmp_path, ["in"])


def test_unreadable_and_missing_inputs_are_refused(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    garbage = tmp_path / "broken.nii.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00 definitely not a gzip stream")
    code, _, err = cli(capsys, "predict", garbage, tmp_path / "thin.nii.gz", "--model", models / "tiny.json")
    assert_refused(
        code, err, "cannot read broken.nii.gz: the file is unreadable or corrupt", tmp_path, ["broken.nii.gz"]
    )
    code, _, err = cli(
        capsys, "predict", tmp_path / "absent.nrrd", tmp_path / "thin.nii.gz", "--model", models / "tiny.json"
    )
    assert_refused(code, err, "file not found", tmp_path, ["broken.nii.gz"])


def test_output_problems_are_refused(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    model = ["--model", models / "tiny.json"]
    before = ["small.nii.gz"]
    code, _, err = cli(capsys, "predict", small_ct, small_ct, *model, "--overwrite")
    assert_refused(code, err, "is the input file", small_ct.parent, before)
    code, _, err = cli(capsys, "predict", small_ct, small_ct.parent / "thin.png", *model)
    assert_refused(code, err, "unsupported file type", small_ct.parent, before)
    code, _, err = cli(capsys, "predict", small_ct, tmp_path / "missing" / "thin.nrrd", *model)
    assert_refused(code, err, "does not exist; create it first", small_ct.parent, before)


def test_bad_device_and_options_are_refused(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["predict", small_ct, tmp_path / "thin.nii.gz", "--model", models / "tiny.json"]
    code, _, err = cli(capsys, *argv, "--device", "tpu")
    assert_refused(code, err, "unknown device 'tpu'", tmp_path, ["in"])
    if not torch.cuda.is_available():
        code, _, err = cli(capsys, *argv, "--device", "cuda")
        assert_refused(code, err, "CUDA", tmp_path, ["in"])
    code, _, err = cli(capsys, *argv, "--tile", 4)
    assert_refused(code, err, "tile 4 is too small", tmp_path, ["in"])
    code, _, err = cli(capsys, *argv, "--depth-overlap", 0)
    assert_refused(code, err, "depth_overlap must be between 1 and 3", tmp_path, ["in"])


def test_model_problems_are_refused(
    tmp_path: Path, small_ct: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "models"
    bad.mkdir()
    for name in ("tiny.json", "tiny.safetensors"):
        (bad / name).write_bytes((models / name).read_bytes())
    card = json.loads((bad / "tiny.json").read_text())
    (bad / "tiny.json").write_text(json.dumps({**card, "ratio": 2.5}))
    output = tmp_path / "thin.nii.gz"
    code, _, err = cli(capsys, "predict", small_ct, output, "--model", bad / "tiny.json")
    assert_refused(code, err, "ratio 2.5 is not a positive whole number", tmp_path, ["in", "models"])

    (bad / "tiny.json").write_text(json.dumps(card))
    blob = bytearray((bad / "tiny.safetensors").read_bytes())
    blob[-1] ^= 1
    (bad / "tiny.safetensors").write_bytes(bytes(blob))
    code, _, err = cli(capsys, "predict", small_ct, output, "--model", bad / "tiny.json")
    assert_refused(code, err, "checksum mismatch", tmp_path, ["in", "models"])

    torch.save({"weights": 1}, bad / "model.pt")
    code, _, err = cli(capsys, "predict", small_ct, output, "--model", bad / "model.pt")
    assert_refused(code, err, "never loads pickles", tmp_path, ["in", "models"])


def test_without_a_bundled_model_the_error_says_how_to_get_one(
    tmp_path: Path, small_ct: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "Models"
    empty.mkdir()
    monkeypatch.setattr(model_cards, "bundled_models_dir", lambda: empty)
    code, _, err = cli(capsys, "predict", small_ct, tmp_path / "thin.nii.gz")
    assert_refused(code, err, "no trained model is bundled with VolumetricSR yet", tmp_path, ["Models", "in"])
    assert "volumetricsr-train" in err


# ---------------------------------------------------------------- summary


def parse_table(text: str) -> dict[str, dict[str, float]]:
    lines = [line.split() for line in text.strip().splitlines()]
    header_index = next(i for i, line in enumerate(lines) if line[0] == "variant")
    columns = lines[header_index][1:]
    return {
        line[0]: dict(zip(columns, (float(v.replace(",", "")) for v in line[1:]), strict=True))
        for line in lines[header_index + 1 :]
    }


def test_summary_counts_every_variant_by_part_beside_the_paper(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "summary")
    assert code == 0
    table = parse_table(out)
    assert list(table) == [f"{size}:{variant}" for size in SIZES for variant in VARIANTS]
    for name, row in table.items():
        parts = sum(v for k, v in row.items() if k not in ("total", "paper", "delta%"))
        assert parts == row["total"], name
        variant = name.split(":")[1]
        assert row["paper"] == PAPER_PARAMETERS[variant]
        assert row["delta%"] == pytest.approx(100 * (row["total"] / row["paper"] - 1), abs=0.05)
    for size in SIZES:
        for variant in ("full", "no_tab", "encoder_only"):
            expected = count_parameters(TVSRN(TVSRNConfig.variant_defaults(variant, size)))
            assert table[f"{size}:{variant}"]["total"] == expected
    assert [table[f"paper:{v}"]["delta%"] for v in ("full", "no_tab", "encoder_only")] == [-0.6, -2.8, 1.4]
    full, no_tab = table["compact:full"], table["compact:no_tab"]
    assert full["TAB"] > 0 and no_tab["TAB"] == 0
    assert full["decoder"] == no_tab["decoder"] > 0
    assert table["paper:full"]["decoder"] == 7 / 4 * full["decoder"]
    assert table["compact:encoder_only"]["decoder"] == 0 and table["compact:vit"]["TAB"] == 0
    assert table["compact:vit"]["encoder"] > 10 * full["encoder"]


def test_summary_of_one_variant_and_of_a_model_file(models: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "summary", "--variant", "no_tab", "--size", "paper")
    assert code == 0 and list(parse_table(out)) == ["paper:no_tab"]

    code, out, _ = cli(capsys, "summary", "--model", models / "tiny.json")
    assert code == 0
    assert out.startswith("tiny: Tiny (trained, x5, variant full)")
    row = parse_table(out)["tiny"]
    assert row["total"] == json.loads((models / "tiny.json").read_text())["parameters"]
    assert row == parameter_parts(TVSRN(TINY))


def test_unknown_variant_is_an_argument_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", "--variant", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


# ---------------------------------------------------------------- the progress bar predict and demo share


def test_progress_bar_shows_the_fraction_done_and_the_message() -> None:
    text = io.StringIO()
    with progress_bar(file=text) as bar:
        show_progress(bar, 0.25, "window 1 of 4")
        show_progress(bar, 0.5, "window 2 of 4")
        assert bar.n == 500
    assert "super-resolving:  50%" in text.getvalue() and "window 2 of 4" in text.getvalue()
    assert "| 00:00<" in text.getvalue() and "| ," not in text.getvalue()  # elapsed<remaining, message


# ---------------------------------------------------------------- demo


def test_demo_subcommand_is_wired_to_the_demo_module(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    assert "--output-dir" in capsys.readouterr().out

    out = tmp_path / "demo"
    argv = [
        "demo",
        "--input",
        tmp_path / "absent.nii.gz",
        "--output-dir",
        out,
        "--model",
        models / "tiny.json",
    ]
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.strip() == f"error: file not found: {tmp_path / 'absent.nii.gz'}"
    assert not out.exists()


def test_demo_subcommand_runs_end_to_end_with_a_model(
    tmp_path: Path, models: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    code, printed, err = cli(
        capsys, "demo", "--output-dir", out, "--model", models / "tiny.json", "--device", "cpu"
    )
    assert code == 0, err
    assert "20 simulated thick slices of 5 mm" in printed and "TVSRN (tiny)" in printed
    assert "cubic B-spline" in printed and "prediction took" in printed
    files = ["thick.nii.gz", "truth.nii.gz", "cubic.nii.gz", "predicted.nii.gz", "review.png"]
    assert sorted(path.name for path in out.iterdir()) == sorted(files)
    predicted, thick = read_volume(out / "predicted.nii.gz"), read_volume(out / "thick.nii.gz")
    grid = thin_grid(thick.affine, thick.array.shape[0], 5)
    assert predicted.array.shape == (grid.slices, *thick.array.shape[1:])
    np.testing.assert_allclose(predicted.affine, grid.affine, atol=1e-3)


# ---------------------------------------------------------------- the installed console script


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "volumetricsr"
    return [str(script)] if script.exists() else [sys.executable, "-m", "VolumetricSRLib.app.cli"]


def test_console_script_predicts_and_refuses_in_a_subprocess(
    tmp_path: Path, small_ct: Path, models: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    output = tmp_path / "thin.nrrd"
    argv = [*console_script(), "predict", str(small_ct), str(output), "--model", str(models / "tiny.json")]
    done = subprocess.run([*argv, "--device", "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "32 x 32 x 26 voxels" in done.stdout
    assert read_volume(output).array.shape == (26, 32, 32)

    refused = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(f"error: {output} already exists")
    assert "Traceback" not in refused.stderr


# ---------------------------------------------------------------- fail before the work


@pytest.mark.parametrize("output", ["/sys/thin.nii.gz", "/sys/thin_series/"], ids=["file", "dicom"])
def test_an_unwritable_output_is_refused_before_the_model_loads(
    small_ct: Path, output: str, capsys: pytest.CaptureFixture
) -> None:
    """/sys refuses new files even to root; the model named does not exist: had the model been loaded
    first, its error would come instead."""
    try:
        Path("/sys/.volumetricsr-test").touch()
    except OSError:
        pass  # refused, as on Linux machines
    else:
        Path("/sys/.volumetricsr-test").unlink()
        pytest.skip("/sys takes new files on this machine")
    code, _, err = cli(capsys, "predict", small_ct, output, "--model", "/no/such/model.json")
    assert code == 2
    assert "cannot write into /sys" in err and "choose an output in a folder you can write to" in err
    assert "model" not in err


def test_too_little_space_for_the_output_is_refused_before_the_model_loads(
    small_ct: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from VolumetricSRLib.io import volume_io

    monkeypatch.setattr(volume_io.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10_000}))
    code, _, err = cli(
        capsys, "predict", small_ct, tmp_path / "thin.nii.gz", "--model", "/no/such/model.json"
    )
    # 6 slices of 32 x 32 at 5 mm -> 1 mm (no card to read: 1 mm), int16: 2 x 6 x 32 x 32 x 5 bytes
    assert code == 2 and f"{tmp_path} has 0.01 MiB free, but the output needs about 0.06 MiB" in err, err
    assert not (tmp_path / "thin.nii.gz").exists()


def test_the_burned_in_marker_is_for_dicom_output_and_refused_before_the_work(
    small_ct: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = cli(
        capsys, "predict", small_ct, tmp_path / "thin.nii.gz", "--burn-in-marker", "--model", "/no/such.json"
    )
    assert (
        code == 2
        and "(--burn-in-marker) is for DICOM output" in err
        and "model" not in err.split("marker")[0]
    )
    assert not (tmp_path / "thin.nii.gz").exists()

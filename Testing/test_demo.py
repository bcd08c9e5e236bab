"""The demo end to end, the PNG writer and review montage it uses, and the project icon."""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, shared_ct
from VolumetricSRLib.app import demo
from VolumetricSRLib.geometry import GeometryError, SpacingWarning, thin_grid
from VolumetricSRLib.inference.interpolation import interpolate_slices
from VolumetricSRLib.io.png import ACCENT_RGB, encode_png, review_montage, write_png
from VolumetricSRLib.io.volume_io import VolumeFileError, read_volume
from VolumetricSRLib.models.tvsrn import TVSRN, TVSRNConfig
from VolumetricSRLib.models.weights import ModelFileError, save_model
from VolumetricSRLib.phantom import chest_phantom

SMALL_PHANTOM = (41, 48, 48)  # 8 thick slices of 5 mm, 36 thin slices on the output grid
TINY = TVSRNConfig.tiny(output="residual")


def decode_png(data: bytes) -> tuple[dict, np.ndarray]:
    """Size, mode and (H, W, channels) pixels of PNG bytes, decoded by Pillow (an independent reader)."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    pixels = np.asarray(image)
    header = {"width": image.width, "height": image.height, "mode": image.mode}
    return header, pixels.reshape(image.height, image.width, -1)


# --- PNG writer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "mode"), [(None, "L"), (3, "RGB"), (4, "RGBA")])
def test_png_round_trip(channels, mode):
    shape = (5, 7) if channels is None else (5, 7, channels)
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    header, pixels = decode_png(encode_png(image))
    assert header == {"width": 7, "height": 5, "mode": mode}
    np.testing.assert_array_equal(pixels.reshape(shape), image)


def test_write_png_refuses_to_overwrite_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "image.png"
    write_png(path, np.zeros((2, 3), np.uint8))
    with pytest.raises(FileExistsError, match="already exists"):
        write_png(path, np.full((2, 3), 255, np.uint8))
    assert decode_png(path.read_bytes())[1].max() == 0
    write_png(path, np.full((2, 3), 255, np.uint8), overwrite=True)
    assert decode_png(path.read_bytes())[1].min() == 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((2, 2), np.float32), "uint8"),
        (np.zeros((2, 2, 2), np.uint8), "expected an"),
        (np.zeros((0, 2), np.uint8), "expected an"),
        (np.zeros(4, np.uint8), "expected an"),
    ],
)
def test_bad_png_images_are_refused(image, fragment):
    with pytest.raises(ValueError, match=fragment):
        encode_png(image)


# --- Review montage -----------------------------------------------------------------------------


def test_montage_puts_one_world_point_in_all_three_planes():
    """Radiological orientation: patient right left, anterior up, superior up, anterior left in sagittal."""
    volume = np.full((5, 6, 7), -1000.0)
    volume[2, 1, 3] = 150.0  # world (-3, -1, 4) with the affine below
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    image = review_montage([("v", volume, affine)], [-3.0, -1.0, 4.0], window=(-1000.0, 150.0), labels=False)
    # x: 7 columns (0 .. -6), y: 6 (0 .. -5), z: 9 at 1 mm (8 .. 0); panels of height 9 side by side.
    assert image.shape == (9, 7 + 4 + 7 + 4 + 6, 3)
    axial, coronal, sagittal = image[:, :7, 0], image[:, 11:18, 0], image[:, 22:28, 0]
    offset = (9 - 6) // 2
    assert axial[offset + 1, 3] == 255
    assert np.count_nonzero(axial == 255) == 1
    assert coronal[4, 3] == 255 and sagittal[4, 1] == 255  # z = 4 is row 4 of 8 .. 0
    assert coronal[2, 3] == 0 and coronal[6, 3] == 0  # z = 6 and z = 2 are other slices


def test_montage_rows_and_labels():
    thin, affine = chest_phantom((21, 32, 32))
    rows = [("thick", thin[::5], affine @ np.diag([1, 1, 5, 1.0])), ("truth", thin, affine)]
    image = review_montage(rows)
    row_height = 32  # 32 pixels of 1.5 mm; 20 mm of slices are 14 pixels, centred
    assert image.shape == (2 * (row_height + 16) + 4, 32 + 4 + 32 + 4 + 32, 3)
    assert np.any(np.all(image[:16] == ACCENT_RGB, axis=-1))  # the label
    assert not np.any(np.all(review_montage(rows, labels=False) == ACCENT_RGB, axis=-1))
    with pytest.raises(ValueError, match="4 x 4 affine"):
        review_montage([("bad", thin, np.eye(3))])


# --- Icon ---------------------------------------------------------------------------------------


def test_icon_is_128_square_identical_in_both_places_and_reproducible():
    root_icon, module_icon = REPO / "VolumetricSR.png", REPO / "Resources" / "Icons" / "VolumetricSR.png"
    assert root_icon.read_bytes() == module_icon.read_bytes()
    header, pixels = decode_png(root_icon.read_bytes())
    assert (header["width"], header["height"], header["mode"]) == (128, 128, "RGBA")
    spec = importlib.util.spec_from_file_location("make_icon", REPO / "Resources" / "Icons" / "make_icon.py")
    make_icon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_icon)
    np.testing.assert_array_equal(pixels, make_icon.icon_image())
    assert pixels[0, 0, 3] == 0 and pixels[64, 64, 3] == 255  # transparent corners, opaque inside
    assert np.any(np.all(pixels[..., :3] == ACCENT_RGB, axis=-1))


# --- Demo ---------------------------------------------------------------------------------------


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    """A trained-flagged tiny residual TVSRN whose zero head makes it exactly linear interpolation."""
    folder = tmp_path / "models"
    folder.mkdir()
    torch.manual_seed(0)
    return save_model(TVSRN(TINY), folder, id="tiny-linear", name="tiny", trained=True)


@pytest.fixture
def no_bundled_model(monkeypatch):
    monkeypatch.setattr(demo, "default_model_path", lambda: None)


def _check_output_geometry(out: Path, thick_slices: int, plane: tuple[int, int], with_prediction: bool):
    """Check the files' shapes and affines (thin files on the thick file's thin grid); returns the thick."""
    thick = read_volume(out / "thick.nii.gz")
    assert thick.array.shape == (thick_slices, *plane)
    assert thick.array.dtype == np.int16
    grid = thin_grid(thick.affine, thick_slices, 5)
    names = ["truth", "cubic"] + (["predicted"] if with_prediction else [])
    for name in names:
        volume = read_volume(out / f"{name}.nii.gz")
        assert volume.array.shape == (grid.slices, *plane), name
        np.testing.assert_allclose(volume.affine, grid.affine, atol=1e-3)
    assert (out / "predicted.nii.gz").exists() == with_prediction
    header, _ = decode_png((out / "review.png").read_bytes())
    assert header["mode"] == "RGB"
    return thick


def test_demo_without_a_model_shows_the_baselines(tmp_path, no_bundled_model):
    out = tmp_path / "demo"
    result = demo.run_demo(out, phantom_shape=SMALL_PHANTOM)
    assert result.model_id is None and result.seconds is None
    assert set(result.scores) == {"cubic", "linear"}
    assert all(math.isfinite(v) for score in result.scores.values() for v in score.values())
    assert result.scores["cubic"]["psnr"] > result.scores["linear"]["psnr"]
    assert demo.NO_MODEL_MESSAGE in result.notes
    thick = _check_output_geometry(out, 8, (48, 48), with_prediction=False)
    thin, _ = chest_phantom(SMALL_PHANTOM)
    np.testing.assert_array_equal(read_volume(out / "truth.nii.gz").array, thin[2:38])
    np.testing.assert_allclose(thick.array[1], thin[5:10].mean(axis=0), atol=0.5)
    assert "no trained model is bundled yet" in demo.format_report(result)


def test_demo_command_prints_the_table(tmp_path, no_bundled_model, capsys):
    parser = argparse.ArgumentParser()
    demo.add_demo_arguments(parser)
    args = parser.parse_args(["--output-dir", str(tmp_path / "out"), "--seed", "2"])
    assert args.batch == 1 and args.tile is None and args.device == "auto" and not args.overwrite
    assert demo.run_demo_command(args) == 0
    printed = capsys.readouterr().out
    assert "no trained model is bundled yet" in printed
    assert "seed 2" in printed and "20 simulated thick slices of 5 mm" in printed
    assert "cubic B-spline" in printed and "linear" in printed and "TVSRN" not in printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["thick.nii.gz", "truth.nii.gz", "cubic.nii.gz", "review.png"]
    )


def test_demo_with_a_model_scores_its_prediction(tmp_path, tiny_model):
    out = tmp_path / "demo"
    result = demo.run_demo(out, model=tiny_model, device="cpu", tile=32, batch=2, phantom_shape=SMALL_PHANTOM)
    assert list(result.scores) == ["prediction", "cubic", "linear"]
    assert result.model_id == "tiny-linear" and result.device.startswith("cpu") and result.seconds > 0
    # The zero-head residual model is linear interpolation, so it must score exactly like it.
    for metric in ("psnr", "ssim"):
        assert result.scores["prediction"][metric] == pytest.approx(result.scores["linear"][metric], abs=1e-4)
    _check_output_geometry(out, 8, (48, 48), with_prediction=True)
    predicted = read_volume(out / "predicted.nii.gz").array
    descriptions = {
        name: nib.load(out / f"{name}.nii.gz").header["descrip"].item() for name in ("predicted", "cubic")
    }
    assert descriptions["predicted"].startswith(b"SYNTHETIC thin CT") and descriptions["cubic"] == b""
    linear = np.rint(interpolate_slices(read_volume(out / "thick.nii.gz").array, 5, "linear"))
    assert np.abs(predicted - linear).max() <= 1
    report = demo.format_report(result)
    assert "TVSRN (tiny-linear)" in report and "prediction took" in report


def test_demo_refuses_to_overwrite_results(tmp_path, no_bundled_model):
    out = tmp_path / "demo"
    demo.run_demo(out, phantom_shape=SMALL_PHANTOM)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(VolumeFileError, match=r"thick.nii.gz.*--overwrite"):
        demo.run_demo(out, phantom_shape=SMALL_PHANTOM, seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    demo.run_demo(out, phantom_shape=SMALL_PHANTOM, seed=1, overwrite=True)
    assert (out / "truth.nii.gz").read_bytes() != before["truth.nii.gz"]


def test_demo_refuses_untrained_weights_before_writing(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    card = save_model(TVSRN(TINY), folder, id="untrained", name="untrained", trained=False)
    with pytest.raises(ModelFileError, match="untrained"):
        demo.run_demo(tmp_path / "demo", model=card, phantom_shape=SMALL_PHANTOM)
    assert not (tmp_path / "demo").exists()


def test_demo_on_a_real_ct(tmp_path, tiny_model):
    path = shared_ct("TotalSegmentator/example_ct_sm.nii.gz")
    source = read_volume(path)
    out = tmp_path / "demo"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = demo.run_demo(out, input_path=path, model=tiny_model, device="cpu")
    assert any(issubclass(w.category, SpacingWarning) for w in caught)  # 3 mm slices -> 15 mm slabs
    assert any("not comparable" in note for note in result.notes)
    assert all(math.isfinite(v) for score in result.scores.values() for v in score.values())
    k, j, i = source.array.shape
    _check_output_geometry(out, k // 5, (j, i), with_prediction=True)
    truth = read_volume(out / "truth.nii.gz").array
    np.testing.assert_array_equal(truth, source.array[2 : 2 + truth.shape[0]])


def test_demo_refuses_an_input_too_short_to_score(tmp_path, no_bundled_model):
    path = shared_ct("ChestImagingPlatform/crop_ct_2slices.nrrd")
    with pytest.raises(GeometryError, match="needs at least 15"):
        demo.run_demo(tmp_path / "demo", input_path=path)
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_a_model_with_an_even_ratio(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    config = TVSRNConfig.tiny(output="residual", ratio=4)
    card = save_model(TVSRN(config), folder, id="even", name="even", trained=True, thick_spacing_mm=4.0)
    with pytest.raises(GeometryError, match="even"):
        demo.run_demo(tmp_path / "demo", model=card, phantom_shape=SMALL_PHANTOM)

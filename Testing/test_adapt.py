"""Adapting a model to one scan (`predict --adapt`): pairs made exactly from the scan's in-plane axes,
held-out pairs never trained on, the model itself never changed, the adapted copy kept only when it
raises the held-out PSNR, and the output's labels saying what happened."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from conftest import tiny_tvsrn
from VolumetricSRLib.app.cli import main
from VolumetricSRLib.checks import InputError
from VolumetricSRLib.inference.adapt import AdaptOptions, ScanPairs, adapt_to_scan, box_weights
from VolumetricSRLib.io.volume_io import write_volume
from VolumetricSRLib.models.weights import load_model, save_model
from VolumetricSRLib.phantom import chest_phantom


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    network = tiny_tvsrn(ratio=5, output="residual")
    return save_model(network, tmp_path_factory.mktemp("model"), id="tiny", name="Tiny", trained=True)


def scan() -> tuple[np.ndarray, np.ndarray]:
    """A 5 mm phantom scan of 0.8 mm pixels, 120 x 110 in plane (room for held-out pairs on both axes)."""
    return chest_phantom((8, 120, 110), slice_mm=5.0, pixel_mm=0.8, seed=3)


def test_box_weights_are_a_centred_slab_of_ratio_thin_slices():
    np.testing.assert_allclose(box_weights(5), np.full(5, 0.2))
    np.testing.assert_allclose(box_weights(4), [0.125, 0.25, 0.25, 0.25, 0.125])
    assert box_weights(3).sum() == pytest.approx(1.0) and box_weights(2).sum() == pytest.approx(1.0)


def test_each_thick_slice_of_a_pair_is_the_mean_of_the_thin_rows_around_it():
    unit = np.random.default_rng(0).random((6, 100, 100), dtype=np.float32)
    pairs = ScanPairs(unit, depth=4, ratio=5, crop=32)
    for held_out in (False, True):
        thick, thin = pairs.pair(np.random.default_rng(1), held_out)
        assert thick.shape == (4, 6, 32) and thin.shape == (16, 6, 32)
        # thin row 5 i sits on thick slice i, which averages the 5 thin rows centred on it
        view = next(v for v in pairs.views if _find(v, thin) is not None)
        start, y, x, mirrored = _find(view, thin)
        assert not (held_out and mirrored)  # held-out pairs are as the scan has them
        for i in range(4):
            rows = view[start + 5 * i - 2 : start + 5 * i + 3, y : y + 6, x : x + 32]
            expected = rows.mean(axis=0)[..., ::-1] if mirrored else rows.mean(axis=0)
            np.testing.assert_allclose(thick[i], expected, rtol=1e-5, atol=1e-6)
        rows_total = view.shape[0]
        if held_out:
            assert start - 2 >= rows_total - int(0.2 * rows_total)  # only the last fifth
        else:
            assert start + 15 + 2 < rows_total - int(0.2 * rows_total)  # never the last fifth


def _find(view: np.ndarray, thin: np.ndarray) -> tuple[int, int, int, bool] | None:
    """Where `thin` (or its mirror along the last axis: then True) is a block of `view`."""
    depth, h, w = thin.shape
    for mirrored, candidate in ((False, thin), (True, thin[..., ::-1])):
        for start in range(view.shape[0] - depth + 1):
            for y in range(view.shape[1] - h + 1):
                for x in range(view.shape[2] - w + 1):
                    if np.array_equal(view[start : start + depth, y : y + h, x : x + w], candidate):
                        return start, y, x, mirrored
    return None


def test_a_scan_too_small_for_pairs_is_refused_by_name(card, tmp_path, capsys):
    network, model_card = load_model(card)
    with pytest.raises(InputError, match=r"in-plane size 40 x 40 is too small .* at least 100 pixels"):
        adapt_to_scan(network, model_card, np.zeros((6, 40, 40), np.int16), AdaptOptions(steps=1))
    hu, affine = chest_phantom((8, 40, 40), slice_mm=5.0, pixel_mm=0.8)
    source = write_volume(tmp_path / "small.nii.gz", hu, affine)
    argv = ["predict", str(source), str(tmp_path / "thin.nii.gz"), "--model", str(card), "--device", "cpu"]
    assert main([*argv, "--adapt", "--progress", "none"]) == 2  # bad input, nothing written
    assert "adaptation needs at least 100 pixels; leave out --adapt" in capsys.readouterr().err
    assert not (tmp_path / "thin.nii.gz").exists()


def test_adaptation_works_on_a_copy_and_is_kept_only_when_it_raises_the_held_out_psnr(card):
    network, model_card = load_model(card)
    before = {name: value.clone() for name, value in network.state_dict().items()}
    hu, _ = scan()
    adapted, result = adapt_to_scan(network, model_card, hu, AdaptOptions(steps=3, crop=32))
    for name, value in network.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} of the model changed"
    assert result.steps == 3 and result.seconds > 0
    assert result.used == (result.psnr_after > result.psnr_before)
    assert (adapted is not network) == result.used
    again = adapt_to_scan(network, model_card, hu, AdaptOptions(steps=3, crop=32))[1]
    assert (again.psnr_before, again.psnr_after) == (result.psnr_before, result.psnr_after)
    assert "adapted to this scan: 3 steps in" in result.line() and " dB PSNR (" in result.line()


def test_an_adaptation_that_lowers_the_held_out_psnr_is_not_used(card):
    network, model_card = load_model(card)
    hu, _ = scan()
    kept, result = adapt_to_scan(network, model_card, hu, AdaptOptions(steps=2, crop=32, lr=10.0))  # diverges
    assert not result.used and result.psnr_after < result.psnr_before and kept is network
    assert "not used: it did not raise the PSNR, the model ran as it was" in result.line()


def test_predict_adapt_labels_the_output_and_reports_it(card, tmp_path, capsys):
    hu, affine = scan()
    source = write_volume(tmp_path / "thick.nii.gz", hu, affine)
    out = tmp_path / "thin.nrrd"
    argv = ["predict", str(source), str(out), "--model", str(card), "--device", "cpu", "--adapt", "2"]
    assert main([*argv, "--progress", "json"]) == 0
    done = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert done["event"] == "done" and done["adaptation"].startswith("adapted to this scan: 2 steps")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out))
    reader.ReadImageInformation()
    assert reader.GetMetaData("VolumetricSR_adaptation") == done["adaptation"]

    series = tmp_path / "series"
    assert main([*argv[:2], f"{series}/", *argv[3:], "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    assert "adapted to this scan: 2 steps" in printed
    header = pydicom.dcmread(sorted(series.iterdir())[0])
    assert "adapted to this scan: 2 steps" in header.DerivationDescription


def test_without_adapt_nothing_is_adapted(card, tmp_path, capsys):
    hu, affine = scan()
    source = write_volume(tmp_path / "thick.nii.gz", hu, affine)
    argv = ["predict", str(source), str(tmp_path / "thin.nii.gz"), "--model", str(card), "--device", "cpu"]
    assert main([*argv, "--progress", "json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["adaptation"] is None

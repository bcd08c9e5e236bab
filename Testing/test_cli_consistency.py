"""The consistency check after `volumetricsr predict`: its figures in the JSON done event, the NRRD and
NIfTI headers and the DICOM comment equal check_consistency computed by hand on the written volumes;
--enforce-consistency corrects the prediction and says so; the Slicer module shows the line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import tiny_tvsrn
from VolumetricSRLib.app.cli import main
from VolumetricSRLib.inference.consistency import check_consistency
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models.weights import save_model
from VolumetricSRLib.phantom import chest_phantom, simulate_thick

WINDOW = (-1000.0, 1000.0)  # not the default window: proves the card's is used
SLAB = "gaussian"  # not the default profile: proves the card's is used


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x5 model whose card records a gaussian training slab and a narrow window."""
    network = tiny_tvsrn(ratio=5, output="residual")
    for parameter in network.head.parameters():
        parameter.data.add_(2e-3)  # off the exact linear interpolation, so there is something to correct
    training = {"config": {"slab": SLAB}}
    folder = tmp_path_factory.mktemp("model")
    return save_model(
        network, folder, id="tiny", name="Tiny", trained=True, intensity_window=WINDOW, training=training
    )


@pytest.fixture
def thick(tmp_path: Path) -> Path:
    thin, affine = chest_phantom((40, 24, 20), pixel_mm=1.0, seed=3)
    hu, thick_affine = simulate_thick(thin, affine, 5)
    return write_volume(tmp_path / "thick.nrrd", np.rint(hu).astype(np.int16), thick_affine)


def predict(card: Path, source: Path, output: Path | str, *options: str) -> int:
    return main(["predict", str(source), str(output), "--model", str(card), "--device", "cpu", *options])


def by_hand(thin_path: Path | str, thick_path: Path):
    """check_consistency on the volumes as written, with the card's ratio, window and slab."""
    return check_consistency(read_volume(thin_path).array, read_volume(thick_path).array, 5, WINDOW, SLAB)


def done_event(out: str) -> dict:
    return [json.loads(line) for line in out.splitlines()][-1]


def test_the_done_event_and_the_nrrd_header_carry_the_check(tmp_path, card, thick, capsys):
    output = tmp_path / "thin.nrrd"
    assert predict(card, thick, output, "--progress", "json") == 0
    done = done_event(capsys.readouterr().out)
    expected = by_hand(output, thick)
    assert done["event"] == "done"
    assert done["consistency"] == expected.summary()
    assert done["consistency"]["slab_profile"] == SLAB and "enforced" not in done["consistency"]
    assert done["consistency_line"] == expected.line()

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(output))
    reader.ReadImageInformation()
    fields = {
        key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys() if key.startswith("VolumetricSR_")
    }
    assert fields["VolumetricSR_consistency"] == expected.line()
    assert fields["VolumetricSR_consistency_mean_abs_hu"] == str(round(expected.mean_abs_hu, 3))
    assert fields["VolumetricSR_consistency_worst_slab"] == str(expected.worst_slab)
    assert fields["VolumetricSR_consistency_worst_abs_hu"] == str(round(expected.worst_abs_hu, 3))
    assert fields["VolumetricSR_consistency_slabs_compared"] == str(len(expected.per_slab_hu)) == "6"
    assert fields["VolumetricSR_consistency_slab_profile"] == SLAB


def test_the_nifti_header_extension_and_aux_file_carry_the_check(tmp_path, card, thick, capsys):
    output = tmp_path / "thin.nii.gz"
    assert predict(card, thick, output) == 0
    expected = by_hand(output, thick)
    assert expected.line() in capsys.readouterr().out  # printed for people too
    header = nib.load(output).header
    (extension,) = [e for e in header.extensions if e.get_code() == 6]  # NIfTI "comment"
    record = json.loads(extension.get_content().decode("utf-8"))
    assert record == {"VolumetricSR_consistency": expected.summary(), "line": expected.line()}
    assert header["aux_file"].item().decode() == f"consistency {expected.mean_abs_hu:.1f} HU"


def test_the_dicom_series_carries_the_line_as_image_comments(tmp_path, card, thick):
    series = tmp_path / "series"
    assert predict(card, thick, f"{series}/") == 0
    expected = by_hand(series, thick)
    comments = {pydicom.dcmread(path).ImageComments for path in series.iterdir()}
    assert comments == {expected.line()}


def test_enforcing_corrects_the_prediction_and_the_labels_say_so(tmp_path, card, thick, capsys):
    plain, enforced = tmp_path / "plain.nrrd", tmp_path / "enforced.nrrd"
    assert predict(card, thick, plain, "--progress", "json") == 0
    before = done_event(capsys.readouterr().out)["consistency"]
    assert predict(card, thick, enforced, "--progress", "json", "--enforce-consistency") == 0
    after = done_event(capsys.readouterr().out)["consistency"]

    measured = by_hand(enforced, thick)
    assert after["mean_abs_hu"] == round(measured.mean_abs_hu, 3)
    assert after["mean_abs_hu"] < before["mean_abs_hu"] / 2  # what is left: int16 rounding, the window
    assert after["enforced"] is True
    assert after["mean_abs_hu_before_enforcing"] == before["mean_abs_hu"] > 1.0
    assert not np.array_equal(read_volume(plain).array, read_volume(enforced).array)
    header = enforced.read_bytes()[:4000].decode("latin-1")
    assert "VolumetricSR_consistency_enforced:=True" in header
    assert f"; enforced (corrected from {before['mean_abs_hu']:.1f} HU)" in header


@pytest.fixture
def thick_3mm(tmp_path: Path) -> Path:
    """3 mm slices: the x5 model makes 0.6 mm slices, resampled to the card's 1 mm by default."""
    thin, affine = chest_phantom((36, 24, 20), pixel_mm=1.0, seed=3)
    hu, thick_affine = simulate_thick(thin, affine, 3)
    return write_volume(tmp_path / "thick_3mm.nrrd", np.rint(hu).astype(np.int16), thick_affine)


def test_a_resampled_output_says_its_check_was_made_on_the_models_grid(tmp_path, card, thick_3mm, capsys):
    native, thin = tmp_path / "native.nrrd", tmp_path / "thin.nrrd"
    assert predict(card, thick_3mm, native, "--progress", "json", "--spacing", "0.6") == 0
    on_native = done_event(capsys.readouterr().out)
    assert on_native["resampling"] is None and "model_grid_mm" not in on_native["consistency"]
    assert on_native["consistency"] == by_hand(native, thick_3mm).summary()
    assert on_native["consistency_line"].startswith("consistency with the measured slices: mean ")

    assert predict(card, thick_3mm, thin, "--progress", "json") == 0
    resampled = done_event(capsys.readouterr().out)
    assert resampled["resampling"] == "cubic B-spline from 0.6 mm to 1 mm"
    assert resampled["consistency"] == {**on_native["consistency"], "model_grid_mm": 0.6}  # the same check
    line = resampled["consistency_line"]
    assert line.startswith(
        "consistency with the measured slices on the model's 0.6 mm grid (before resampling): "
    )
    assert line.endswith(on_native["consistency_line"].removeprefix("consistency with the measured slices"))
    header = thin.read_bytes()[:4000].decode("latin-1")
    assert (
        f"VolumetricSR_consistency:={line}" in header
        and "VolumetricSR_consistency_model_grid_mm:=0.6" in header
    )


def test_enforcing_is_refused_when_the_output_would_be_resampled(tmp_path, card, thick_3mm, capsys):
    assert predict(card, thick_3mm, tmp_path / "thin.nrrd", "--enforce-consistency") == 2
    err = capsys.readouterr().err
    assert (
        "error: enforcing consistency (--enforce-consistency) corrects the model's own 0.6 mm slices "
        "(input 3 mm / 5), but the " in err
    )
    assert (
        "output would be resampled to 1 mm, which undoes the correction; set the output spacing to 0.6 mm "
        "(--spacing 0.6) to keep the model's slices, or do not enforce consistency"
    ) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thick_3mm.nrrd"]  # nothing written
    assert predict(card, thick_3mm, tmp_path / "thin.nrrd", "--enforce-consistency", "--spacing", "0.5") == 2
    assert "to 0.5 mm, which undoes the correction; set the output spacing to 0.6 mm instead of 0.5 mm " in (
        capsys.readouterr().err
    )
    assert predict(card, thick_3mm, tmp_path / "thin.nrrd", "--enforce-consistency", "--spacing", "0.6") == 0
    line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("consistency")]
    assert line and "; enforced (corrected from " in line[0] and "model's" not in line[0]


def test_a_model_of_depth_2_on_two_slices_skips_the_check_with_a_note(tmp_path, capsys):
    network = tiny_tvsrn(ratio=5, depth=2, output="residual")
    card = save_model(network, tmp_path, id="two", name="Two", trained=True)
    hu, affine = chest_phantom((2, 24, 20), slice_mm=5.0, pixel_mm=1.0)
    source = write_volume(tmp_path / "two.nrrd", hu, affine)
    assert predict(card, source, tmp_path / "thin.nrrd", "--progress", "json") == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["shape"] == [20, 24, 6]
    assert events[-1]["consistency"] is None and events[-1]["consistency_line"] is None
    notes = [event["message"] for event in events if event["event"] == "warning"]
    assert any(note.startswith("no consistency check: 2 thick slices leave no full slab") for note in notes)
    assert "Traceback" not in captured.err
    code = predict(card, source, tmp_path / "enforced.nrrd", "--enforce-consistency")
    assert (
        code == 2
        and "enforcing consistency (--enforce-consistency) needs at least 3 thick slices"
        in capsys.readouterr().err
    )


def test_the_slicer_module_status_line_shows_the_check(tmp_path, card, thick):
    slicer = pytest.importorskip("slicer", reason="the MRML tests need the slicer-core wheel")
    from VolumetricSRMRML.processing import RunSettings, super_resolve_volume
    from VolumetricSRMRML.volume_nodes import write_thin_volume

    scene = slicer.vtkMRMLScene()
    volume = read_volume(thick)
    node = write_thin_volume(scene, volume.array, volume.affine, name="thick")
    settings = RunSettings(model=str(card), device="cpu", enforce_consistency=True)
    result = super_resolve_volume(node, settings, python=sys.executable)
    assert result.consistency is not None and result.consistency.startswith(
        "consistency with the measured slices"
    )
    assert "enforced (corrected from" in result.consistency
    assert result.summary().endswith(f"; {result.consistency}")
    assert RunSettings(spacing_mm=1.5).arguments()[-2:] == ["--spacing", "1.5"]

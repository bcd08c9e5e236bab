"""Fine-tuning on a site's own thin CT: held-out scans scored before and after, a model whose card names
its parent, never made the default when it loses; the new model runs in predict and in Slicer's path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_TRAINING_CT, SHARED_DATA, phantom_ct, tiny_tvsrn
from volumetricsr_training.cli import main
from volumetricsr_training.finetune import split_volumes
from VolumetricSRLib.app.cli import main as predict_main
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models.weights import load_model, save_model
from VolumetricSRLib.phantom import chest_phantom, simulate_thick


@pytest.fixture(params=["phantom", "real"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A site's folder of thin CT: two volumes, the second of which is held out."""
    folder = tmp_path / "site"
    folder.mkdir()
    if request.param == "real":
        real = SHARED_DATA / "ct" / REAL_TRAINING_CT
        if not real.is_file():
            pytest.skip(f"the real-CT variant needs {real} (../shared beside the checkout)")
        shutil.copy(real, folder / "a_real.nii.gz")
    else:
        shutil.copy(phantom_ct(), folder / "a_phantom.nii.gz")
    hu, affine = chest_phantom((30, 101, 122), slice_mm=3.0, pixel_mm=1.5, seed=9)
    write_volume(folder / "b_phantom.nii.gz", hu, affine)
    return folder


def test_the_split_holds_out_the_last_volumes_and_needs_one_of_each() -> None:
    paths = [Path("c.nii.gz"), Path("a.nii.gz"), Path("b.nii.gz")]
    assert split_volumes(paths, 1) == ([Path("a.nii.gz"), Path("b.nii.gz")], [Path("c.nii.gz")])
    with pytest.raises(ValueError, match="1 thin volume"):
        split_volumes(paths[:1], 1)


def test_finetune_scores_before_and_after_and_exports_a_model_that_runs(site: Path, tmp_path: Path, capsys):
    parent_dir = tmp_path / "parent"
    parent_dir.mkdir()
    network = tiny_tvsrn(ratio=5, output="residual")
    parent = save_model(network, parent_dir, id="tiny-parent", name="Tiny", trained=True, thin_spacing_mm=1.0)
    out = tmp_path / "models"
    out.mkdir()
    argv = ["finetune", "--model", str(parent), "--thin", str(site), "--id", "tiny-site", "--name", "Site",
            "--out", str(out), "--run-dir", str(tmp_path / "run"), "--steps", "3", "--crop", "16",
            "--device", "cpu", "--threads", "1", "--set-default"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "parent tiny-parent on the held-out scans:" in printed and "held-out PSNR: tiny-parent" in printed
    _, card = load_model(out / "tiny-site.json")
    held = card.metrics["held_out"]
    assert held["parent"]["model"] == "tiny-parent" and held["cases"] == ["b_phantom"]
    assert card.training["phases"][0]["model"] == "tiny-parent"  # the card names its parent
    assert "fine-tuned for 3 steps on pseudo pairs of 1 site volume(s)" in card.description
    gain = held["methods"]["model"]["psnr_mean"] - held["parent"]["psnr_mean"]
    assert f"({gain:+.2f} dB," in card.description
    assert (out / "default.txt").exists() == (gain > 0)  # made the default only when it beats its parent

    thin, affine = chest_phantom((30, 32, 32), pixel_mm=1.5)
    thick, thick_affine = simulate_thick(thin, affine, 5)
    thick = np.rint(thick).astype(np.int16)
    source = write_volume(tmp_path / "thick.nrrd", thick, thick_affine)
    model = str(out / "tiny-site.json")
    assert (
        predict_main(
            ["predict", str(source), str(tmp_path / "thin.nrrd"), "--model", model, "--device", "cpu"]
        )
        == 0
    )
    assert read_volume(tmp_path / "thin.nrrd").array.shape[0] == 26
    slicer = pytest.importorskip("slicer", reason="the Slicer path needs the slicer-core wheel")
    from VolumetricSRMRML.processing import RunSettings, super_resolve_volume
    from VolumetricSRMRML.volume_nodes import write_thin_volume

    scene = slicer.vtkMRMLScene()
    node = write_thin_volume(scene, thick, thick_affine, name="thick")
    result = super_resolve_volume(node, RunSettings(model=model, device="cpu"), python=sys.executable)
    assert result.output.GetImageData().GetDimensions()[2] == 26

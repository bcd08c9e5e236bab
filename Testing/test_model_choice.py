"""The bundled model is chosen by the input's slice thickness when no --model is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_tvsrn
from VolumetricSRLib.app.cli import main
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models import model_cards
from VolumetricSRLib.models.model_cards import model_for_slices
from VolumetricSRLib.models.weights import save_model
from VolumetricSRLib.phantom import chest_phantom, simulate_thick


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bundled-models folder: the default x5 model for 5 mm, a x3 model for 3 mm and an untrained x3
    model for 4 mm (never chosen: untrained)."""
    directory = tmp_path / "models"
    directory.mkdir()
    save_model(tiny_tvsrn(ratio=5), directory, id="x5", name="x5", trained=True, thin_spacing_mm=1.0)
    save_model(
        tiny_tvsrn(ratio=3),
        directory,
        id="x3",
        name="x3",
        trained=True,
        thick_spacing_mm=3.0,
        thin_spacing_mm=1.0,
    )
    save_model(
        tiny_tvsrn(ratio=3), directory, id="a-untrained", name="u", trained=False, thick_spacing_mm=4.0
    )
    (directory / "default.txt").write_text("x5\n")
    monkeypatch.setattr(model_cards, "bundled_models_dir", lambda: directory)
    return directory


@pytest.mark.parametrize(
    ("slice_mm", "chosen"),
    [
        (5.0, "x5"),  # made for it
        (5.4, "x5"),  # within 10 % of 5 mm
        (3.0, "x3"),
        (2.8, "x3"),
        (2.5, "x5"),  # x5 gives 0.5 mm: every second slice lies on 1 mm
        (4.0, "x5"),  # no model lands on 1 mm: the default, then resampling
        (2.0, "x5"),
    ],
)
def test_the_model_made_for_the_thickness_then_one_that_lands_on_the_grid_then_the_default(
    bundle: Path, slice_mm: float, chosen: str
) -> None:
    assert model_for_slices(slice_mm) == bundle / f"{chosen}.json"


def test_a_requested_thin_spacing_decides_which_grid_lands(bundle: Path) -> None:
    assert model_for_slices(2.0, thin_mm=0.4) == bundle / "x5.json"  # 2 / 5 = 0.4
    assert model_for_slices(1.8, thin_mm=0.6) == bundle / "x3.json"  # 1.8 / 3 = 0.6; 1.8 / 5 = 0.36


def thick_file(folder: Path, slice_mm: float) -> Path:
    """A thick phantom of `slice_mm` slices (0.75 mm pixels), written as NIfTI."""
    thin, affine = chest_phantom(shape=(35, 24, 24), pixel_mm=0.75)
    thick, thick_affine = simulate_thick(thin, affine, 5)  # 7 slices
    thick_affine[:3, 2] *= slice_mm / np.linalg.norm(thick_affine[:3, 2])
    return write_volume(
        folder / f"thick_{slice_mm:g}mm.nii.gz", np.rint(thick).astype(np.int16), thick_affine
    )


def test_predict_runs_and_names_the_model_for_each_study(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    three, five = thick_file(tmp_path, 3.0), thick_file(tmp_path, 5.0)
    assert main(["predict", str(three), str(tmp_path / "thin3.nii.gz"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "model: x3 (x3, made for 3 mm slices into 1 mm)" in out
    assert read_volume(tmp_path / "thin3.nii.gz").array.shape[0] == 3 * 6 + 1  # own grid: 1 mm, no resampling
    assert "slices resampled" not in out

    outputs = tmp_path / "many"
    assert main(["predict", str(three), str(five), "--output-dir", str(outputs), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("model: x3 (x3,") == 1 and out.count("model: x5 (x5,") == 1

    assert (
        main(["predict", str(three), str(tmp_path / "forced.nii.gz"), "--model", str(bundle / "x5.json")])
        == 0
    )
    out = capsys.readouterr().out
    assert "model: x5 (x5, made for 5 mm slices into 1 mm)" in out and "slices resampled" in out

"""The README's RPLHR-CT path on an RPLHR-CT-shaped folder, run as written: check-data (geometry and
values), train from the paper's config, evaluate, and report from the comparison's configs, with only
sizes and steps made small for a test."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REAL_TRAINING_CT, REPO, SHARED_DATA, phantom_ct
from volumetricsr_training.cli import main
from VolumetricSRLib.io.volume_io import read_volume, write_volume

CONFIGS = REPO / "training" / "configs"
TINY = {"channels": 2, "encoder_layers": 1, "tab_layers": 1, "axial_layers": 1, "window": 4, "heads": 1,
        "tab_fold": 2, "tab_window": [4, 4]}  # fmt: skip
SMALL = ["steps=2", "crop=[4, 16, 16]", "device='cpu'", "progress=False", "tensorboard=False", "plot=False",
         "threads=1", "log_every=1", "snapshot_every=0", "val_every=2"]  # fmt: skip


def settings(*items: str) -> list[str]:
    return [argument for item in items for argument in ("--set", item)]


@pytest.fixture(params=["phantom", "real"])
def source(request: pytest.FixtureRequest) -> Path:
    if request.param == "phantom":
        return phantom_ct()
    path = SHARED_DATA / "ct" / REAL_TRAINING_CT
    if not path.is_file():
        pytest.skip(f"the real-CT variant needs {path} (../shared beside the checkout)")
    return path


def rplhr_folder(root: Path, source: Path) -> Path:
    """ROOT/{train,val,test}/{1mm,5mm}/CASE.nii.gz made with make-pairs (box slabs of 5 thin slices)."""
    for split in ("train", "val", "test"):
        assert main(["make-pairs", "--volumes", str(source), "--out", str(root), "--split", split]) == 0
    return root


def test_check_data_looks_at_the_values_and_names_scaled_files(tmp_path: Path, capsys, source: Path) -> None:
    root = rplhr_folder(tmp_path / "RPLHR-CT", source)
    assert main(["check-data", str(root), "--ratio", "5"]) == 0
    capsys.readouterr()
    scaled = tmp_path / "scaled"
    shutil.copytree(root, scaled)
    thin = next((scaled / "train" / "1mm").glob("*.nii.gz"))
    volume = read_volume(thin)
    unit = ((np.clip(volume.array, -1024, 2048) + 1024) / 3072).astype(np.float32)
    write_volume(thin, unit, volume.affine, overwrite=True)
    assert main(["check-data", str(scaled), "--ratio", "5"]) == 1
    out = capsys.readouterr().out
    assert f"train/{thin.name.removesuffix('.nii.gz')}: {thin.name} holds values from 0 to" in out
    assert "not HU: it looks scaled to [0, 1]" in out


def test_train_evaluate_and_report_run_from_the_configs_as_written(
    tmp_path: Path, capsys, source: Path
) -> None:
    root = rplhr_folder(tmp_path / "RPLHR-CT", source)
    run = tmp_path / "runs" / "paper_rplhr"
    model = [f"model.{key}={value!r}" for key, value in TINY.items()]
    argv = ["train", "--config", str(CONFIGS / "paper_rplhr.toml")]
    assert main(argv + settings(f"rplhr_root={str(root)!r}", f"run_dir={str(run)!r}", *SMALL, *model)) == 0
    with open(run / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[-1]["step"] == "2" and rows[-1]["val_psnr"]  # validated on the RPLHR-CT val split

    assert main(["evaluate", "--model", str(run / "last.pt"), "--rplhr", str(root), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0  # fmt: skip
    assert (tmp_path / "eval" / "summary.json").is_file()

    saint = str(CONFIGS / "baseline_saint.toml")
    argv = ["report", "--methods", "cubic", saint, "--rplhr", str(root), "--split", "test", "--runs",
            str(tmp_path / "runs"), "--out", str(tmp_path / "report")]  # fmt: skip
    assert main(argv + settings(f"rplhr_root={str(root)!r}", *SMALL)) == 0
    assert (tmp_path / "runs" / "saint" / "last.pt").is_file()  # trained on RPLHR-CT, in --runs
    report = (tmp_path / "report" / "report.md").read_text()
    assert "real pairs of RPLHR-CT split test" in report and "SAINT" in report

"""`volumetricsr predict IN [IN ...] --output-dir DIR`: output names, a failing study that stops
nothing, skipping and --overwrite, and the share of each process under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dicom_series import LPS, write_series

from conftest import REPO, tiny_tvsrn
from VolumetricSRLib.app import cli, run
from VolumetricSRLib.app.batch import Ranks, Study, output_names, plan_studies, rank_share
from VolumetricSRLib.io.volume_io import SUPPORTED, read_volume, write_volume
from VolumetricSRLib.models.weights import save_model
from VolumetricSRLib.phantom import chest_phantom


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(
        tiny_tvsrn(ratio=5, output="residual"),
        tmp_path_factory.mktemp("model"),
        id="tiny",
        name="Tiny",
        trained=True,
    )


def thick(folder: Path, name: str, seed: int = 0) -> Path:
    """A small 5 mm phantom scan as a volume file."""
    folder.mkdir(parents=True, exist_ok=True)
    hu, affine = chest_phantom((6, 20, 16), slice_mm=5.0, pixel_mm=1.0, seed=seed)
    return write_volume(folder / name, hu, affine)


def predict_many(capsys, card: Path, *argv: object) -> tuple[int, str, str]:
    code = cli.main(
        ["predict", *map(str, argv), "--model", str(card), "--device", "cpu", "--progress", "none"]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(out: str) -> dict[str, list[str]]:
    """The summary table's rows by study: [status, seconds, output or error]."""
    lines = out.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("study "))
    return {line.split()[0]: line.split(maxsplit=3)[1:] for line in lines[start + 1 :]}


# ---------------------------------------------------------------- names and shares


def test_output_names_are_stems_made_unique_by_parent_folders_then_extensions():
    paths = [Path("/d/a/ct.nii.gz"), Path("/d/b/ct.nii.gz"), Path("/d/c/chest_5mm"), Path("/d/c/x.nrrd")]
    assert output_names(paths) == ["a_ct", "b_ct", "chest_5mm", "x"]
    assert output_names([Path("/d/a/ct.nii.gz"), Path("/d/a/ct.nrrd")]) == ["ct_nii_gz", "ct_nrrd"]
    assert output_names([Path("/d/x/a/ct.nrrd"), Path("/d/y/a/ct.nrrd")]) == ["x_a_ct", "y_a_ct"]
    assert output_names([Path("/a/ct.nrrd"), Path("/x/a/ct.nrrd")]) == ["a_ct", "x_a_ct"]
    mixed = [Path("/x/a/ct.nii.gz"), Path("/x/a/ct.nrrd"), Path("/y/a/ct.nrrd")]
    assert output_names(mixed) == ["x_a_ct_nii_gz", "x_a_ct_nrrd", "y_a_ct"]


def test_output_names_drop_every_extension_that_read_volume_reads():
    for extension in SUPPORTED:
        assert output_names([Path(f"/d/chest{extension.upper()}")]) == ["chest"], extension
        assert output_names([Path(f"/d/{extension}")]) == [extension]  # nothing before it: kept whole


def test_plan_sorts_removes_duplicates_and_names_dicom_folders(tmp_path):
    first, second = thick(tmp_path / "b", "ct.nii.gz"), thick(tmp_path / "a", "ct.nii.gz")
    plan = plan_studies([first, second, tmp_path / "b" / ".." / "b" / "ct.nii.gz"], tmp_path / "out")
    assert plan == [
        Study(second, tmp_path / "out" / "a_ct_thin.nii.gz"),
        Study(first, tmp_path / "out" / "b_ct_thin.nii.gz"),
    ]
    assert (
        plan_studies([tmp_path / "a"], tmp_path / "out", "dicom")[0].output == tmp_path / "out" / "a_thin"
    )


def test_every_study_falls_to_exactly_one_rank():
    studies = [Study(Path(f"{n}"), Path(f"{n}_thin")) for n in range(7)]
    shares = [rank_share(studies, Ranks(rank, 3)) for rank in range(3)]
    assert sorted(study.input.name for share in shares for study in share) == [f"{n}" for n in range(7)]
    assert [len(share) for share in shares] == [3, 2, 2]


def test_ranks_come_from_the_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Ranks.from_environment() == Ranks(1, 2, 1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK 2 and WORLD_SIZE 2 do not fit"):
        Ranks.from_environment()


def test_a_gpu_request_under_torchrun_means_the_gpu_of_the_local_rank(monkeypatch):
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: True)
    assert run.device_of_rank("auto", Ranks(3, 4, 1)) == "cuda:1"
    assert run.device_of_rank("cuda", Ranks(3, 4, 1)) == "cuda:1"
    assert run.device_of_rank("cpu", Ranks(3, 4, 1)) == "cpu"
    assert run.device_of_rank("auto", Ranks()) == "auto"  # one process: the usual choice


# ---------------------------------------------------------------- runs


def test_a_failing_study_stops_nothing_and_the_run_exits_non_zero(tmp_path, card, capsys):
    good = [thick(tmp_path / "in", f"s{n}.nii.gz", seed=n) for n in range(2)]
    broken = tmp_path / "in" / "broken.nii.gz"
    broken.write_bytes(b"not a volume")
    out = tmp_path / "out"
    code, stdout, err = predict_many(capsys, card, *good, broken, "--output-dir", out)
    assert code == 1
    rows = table_rows(stdout)
    assert rows[str(good[0])][0] == rows[str(good[1])][0] == "done"
    assert rows[str(good[0])][2] == str(out / "s0_thin.nii.gz")
    assert rows[str(broken)][0] == "failed" and "cannot read broken.nii.gz" in rows[str(broken)][2]
    assert f"error: 1 of 3 studies failed: {broken}" in err
    assert sorted(p.name for p in out.iterdir()) == ["s0_thin.nii.gz", "s1_thin.nii.gz"]
    assert read_volume(out / "s1_thin.nii.gz").array.shape == (26, 20, 16)


def test_existing_outputs_are_skipped_unless_overwrite(tmp_path, card, capsys):
    sources = [thick(tmp_path / "in", f"s{n}.nii.gz", seed=n) for n in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "s0_thin.nii.gz").write_bytes(b"an earlier result")
    code, stdout, _ = predict_many(capsys, card, *sources, "--output-dir", out)
    assert code == 0
    rows = table_rows(stdout)
    assert rows[str(sources[0])][0] == "skipped" and rows[str(sources[1])][0] == "done"
    assert (out / "s0_thin.nii.gz").read_bytes() == b"an earlier result"

    code, stdout, _ = predict_many(capsys, card, *sources, "--output-dir", out, "--overwrite")
    assert code == 0
    assert {row[0] for row in table_rows(stdout).values()} == {"done"}
    assert read_volume(out / "s0_thin.nii.gz").array.shape == (26, 20, 16)


def test_dicom_folders_and_json_progress(tmp_path, card, capsys):
    hu, affine = chest_phantom((6, 20, 16), slice_mm=5.0, pixel_mm=1.0)
    lps = LPS @ affine[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    positions = lps[:, 3] + np.outer(np.arange(6), lps[:, 2])
    folder = tmp_path / "chest_5mm"
    row, column = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    write_series(folder, (hu + 1024).astype(np.uint16), positions, row, column, (spacing[1], spacing[0]))
    out = tmp_path / "out"
    code = cli.main(["predict", str(folder), "--output-dir", str(out), "--format", "dicom",
                     "--model", str(card), "--device", "cpu", "--progress", "json"])  # fmt: skip
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    study = next(event for event in events if event["event"] == "study")
    assert study["status"] == "done" and study["detail"] == str(out / "chest_5mm_thin") and study["rank"] == 0
    assert events[-1]["event"] == "summary" and events[-1]["failed"] == []
    assert read_volume(out / "chest_5mm_thin").array.shape == (26, 20, 16)


def write_dicom_phantom(folder: Path, slices: int, series_uid: str) -> None:
    """A 5 mm phantom scan of `slices` slices as a DICOM CT series."""
    hu, affine = chest_phantom((slices, 20, 16), slice_mm=5.0, pixel_mm=1.0)
    lps = LPS @ affine[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    positions = lps[:, 3] + np.outer(np.arange(slices), lps[:, 2])
    row, column = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    stored = (hu + 1024).astype(np.uint16)
    write_series(folder, stored, positions, row, column, (spacing[1], spacing[0]), series_uid=series_uid)


def test_series_chooses_the_series_of_a_single_input_with_output_dir(tmp_path, card, capsys):
    study = tmp_path / "study"
    write_dicom_phantom(study / "a", 6, "1.2.826.9.1")
    write_dicom_phantom(study / "b", 7, "1.2.826.9.2")
    out = tmp_path / "out"
    code, stdout, err = predict_many(capsys, card, study, "--output-dir", out)
    assert (
        code == 1 and "holds 2 CT series; choose one with --series UID" in table_rows(stdout)[str(study)][2]
    )
    code, stdout, err = predict_many(capsys, card, study, "--output-dir", out, "--series", "1.2.826.9.2")
    assert code == 0, err
    assert table_rows(stdout)[str(study)][0] == "done"
    assert read_volume(out / "study_thin.nii.gz").array.shape == (31, 20, 16)  # (7 - 1) * 5 + 1: series b


def test_an_interrupt_says_how_many_studies_were_written(tmp_path, card, capsys, monkeypatch):
    sources = [thick(tmp_path / "in", f"s{n}.nii.gz", seed=n) for n in range(3)]
    out = tmp_path / "out"
    real, calls = run.super_resolve, []

    def interrupted_on_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "super_resolve", interrupted_on_the_second)
    code, _, err = predict_many(capsys, card, *sources, "--output-dir", out)
    assert code == 130
    assert (
        f"error: interrupted during study 2/3 ({sources[1]}), which was not written; 1 study was written "
        f"to {out} in this run"
    ) in err.splitlines()
    assert "nothing was written" not in err
    assert sorted(p.name for p in out.iterdir()) == ["s0_thin.nii.gz"]

    calls.clear()
    argv = [*map(str, sources), "--output-dir", str(out), "--model", str(card), "--device", "cpu"]
    assert cli.main(["predict", *argv, "--progress", "json"]) == 130  # s0 skipped, s1 done, s2 interrupted
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last == {
        "event": "error",
        "message": f"interrupted during study 3/3 ({sources[2]}), which was not written; 1 study was written "
        f"to {out} in this run",
        "code": 130,
    }

    calls.clear()
    calls.append(None)  # the first call is the second: interrupted at once
    (out / "s0_thin.nii.gz").unlink()
    code, _, err = predict_many(capsys, card, *sources, "--output-dir", out, "--overwrite")
    assert code == 130
    assert (
        f"error: interrupted during study 1/3 ({sources[0]}), which was not written; nothing was written"
        in err
    )


def test_the_forms_of_predict_are_checked(tmp_path, card, capsys):
    source = thick(tmp_path / "in", "s.nii.gz")
    code, _, err = predict_many(capsys, card, source, tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    assert code == 2 and "predict takes an INPUT and an OUTPUT, got 3 path(s)" in err
    code, _, err = predict_many(
        capsys, card, source, source, "--output-dir", tmp_path / "o", "--series", "1.2"
    )
    assert code == 2 and "--series chooses a series in one DICOM folder" in err


def test_torchrun_with_two_processes_does_every_study_exactly_once(tmp_path, card):
    sources = [thick(tmp_path / "in", f"s{n}.nii.gz", seed=n) for n in range(3)]
    broken = tmp_path / "in" / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\n")
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": str(REPO / "VolumetricSR"), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    options = ["--output-dir", str(out), "--model", str(card), "--device", "cpu", "--progress", "none"]
    cli = ["-m", "VolumetricSRLib.app.cli", "predict"]
    command = [*launcher, *cli, *map(str, sources), str(broken), *options]
    run = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert run.returncode != 0  # the broken study; the others are all done
    started = [line for line in run.stdout.splitlines() if line.startswith("[rank ")]
    for path in (*sources, broken):
        assert sum(f"] {path} -> " in line for line in started) == 1, run.stdout
    assert {line.split(",")[0] for line in started} == {"[rank 0 of 2", "[rank 1 of 2"}
    rows = table_rows(run.stdout)
    assert sorted(rows) == sorted(str(path) for path in (*sources, broken))  # rank 0 reports every study
    assert [rows[str(path)][0] for path in sources] == ["done"] * 3 and rows[str(broken)][0] == "failed"
    assert sorted(p.name for p in out.iterdir()) == ["s0_thin.nii.gz", "s1_thin.nii.gz", "s2_thin.nii.gz"]
    assert f"error: 1 of 4 studies failed: {broken}" in run.stderr

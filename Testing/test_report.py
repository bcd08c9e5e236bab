"""The report command: methods trained (resuming) and scored on the same cases, the table and its
p-values, the trade-off plot, provenance, and a rerun that redoes nothing."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import start_training_cli, tiny_tvsrn, wait_for_logged_steps
from volumetricsr_training.cli import main
from volumetricsr_training.evaluate import one_sided_wilcoxon, pseudo_cases
from volumetricsr_training.report import (
    MethodSpec,
    Scored,
    git_commit,
    parse_method,
    parse_methods,
    place_labels,
    summary_rows,
)
from VolumetricSRLib.io.volume_io import write_volume
from VolumetricSRLib.models.architectures import REGISTRY
from VolumetricSRLib.models.weights import save_model
from VolumetricSRLib.phantom import chest_phantom


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    return json.dumps(value)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two thin phantom chests (different seeds) of 1.5 mm slices: two test cases."""
    folder = tmp_path_factory.mktemp("thin")
    paths = []
    for seed in (1, 2):
        hu, affine = chest_phantom((41, 40, 48), slice_mm=1.5, pixel_mm=3.0, seed=seed)
        path = folder / f"chest{seed}.nii.gz"
        write_volume(path, hu, affine)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def zero_head_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny residual TVSRN whose head starts at zero: it predicts linear interpolation exactly."""
    folder = tmp_path_factory.mktemp("model")
    return save_model(
        tiny_tvsrn(ratio=5, output="residual"), folder, id="zero-head", name="zero", trained=True
    )


def tiny_config(folder: Path, train_volume: Path, steps: int = 6) -> Path:
    """A SAINT of the tiny size trained for a few steps on one phantom (run folder inside `folder`)."""
    saint = REGISTRY["saint"].config.tiny().to_dict()
    settings = {
        "run_dir": str(folder / "run"), "model": {"arch": "saint", **saint},
        "train_volumes": [str(train_volume)], "crop": [4, 16, 16], "batch": 2, "steps": steps, "lr": 3e-3,
        "warmup": 1, "log_every": 1, "device": "cpu", "threads": 1, "progress": False, "snapshot_every": 0,
        "tensorboard": False, "plot": False, "checkpoint_minutes": 5.0,
    }  # fmt: skip
    path = folder / "baseline_saint_tiny.toml"
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in settings.items()))
    return path


def test_methods_are_named_by_kind_and_duplicates_refused(tmp_path):
    config = tmp_path / "baseline_resvox.toml"
    config.write_text("")
    assert parse_method("lanczos") == MethodSpec("lanczos", "interpolation", "lanczos")
    assert parse_method(str(config)) == MethodSpec("resvox", "config", str(config))
    assert parse_method("runs/x/best.pt") == MethodSpec("best", "model", "runs/x/best.pt")
    with pytest.raises(ValueError, match="training config not found"):
        parse_method(str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="two methods share the name best"):
        parse_methods(["a/best.pt", "b/best.pt"])


def test_p_values_compare_the_best_method_with_each_other():
    def scored(name: str, psnr: list[float]) -> Scored:
        rows = [{"psnr": p, "ssim": p / 100, "seconds": 1.0} for p in psnr]
        return Scored(MethodSpec(name, "interpolation", name), name, 0, rows, {"scored": name})

    best, other, worst = [30.0, 31.0, 32.5, 29.0, 33.0], [29.5, 30.2, 32.4, 28.0, 32.0], [20.0] * 5
    rows = summary_rows([scored("other", other), scored("best", best), scored("worst", worst)])
    assert [row["method"] for row in rows] == ["best", "other", "worst"]
    assert rows[0]["psnr_p_vs_best"] is None and rows[0]["psnr_mean"] == pytest.approx(np.mean(best))
    assert rows[1]["psnr_p_vs_best"] == pytest.approx(one_sided_wilcoxon(np.array(best), np.array(other)))
    assert rows[2]["psnr_p_vs_best"] == pytest.approx(0.03125)  # all 5 differences positive: 1 / 2**5
    assert rows[1]["psnr_std"] == pytest.approx(np.std(other))
    assert rows[0]["psnr_drop_vs_best"] == 0.0
    assert rows[1]["psnr_drop_vs_best"] == pytest.approx(np.mean(best) - np.mean(other))  # 0.68 dB
    assert rows[2]["psnr_drop_vs_best"] == pytest.approx(31.1 - 20.0)


def test_each_row_is_tested_against_the_row_below_with_a_bootstrap_interval():
    from volumetricsr_training.report import paired_bootstrap_ci

    def scored(name: str, psnr: list[float]) -> Scored:
        rows = [{"psnr": p, "ssim": p / 100, "seconds": 1.0, "psnr_bone": p - 3} for p in psnr]
        return Scored(MethodSpec(name, "interpolation", name), name, 0, rows, {"scored": name})

    best, other, worst = [30.0, 31.0, 32.5, 29.0, 33.0], [29.5, 30.2, 32.4, 28.0, 32.0], [20.0] * 5
    rows = summary_rows([scored("worst", worst), scored("best", best), scored("other", other)])
    gains = np.array(best) - np.array(other)  # 0.5 0.8 0.1 1.0 1.0
    assert rows[0]["psnr_gain_vs_below"] == pytest.approx(gains.mean())
    assert rows[0]["psnr_p_vs_below"] == pytest.approx(0.03125)  # five positive differences: 1 / 2**5
    low, high = rows[0]["psnr_gain_ci_low"], rows[0]["psnr_gain_ci_high"]
    assert gains.min() <= low < gains.mean() < high <= gains.max()
    assert (low, high) == paired_bootstrap_ci(np.array(best), np.array(other))  # fixed seed: reproducible
    assert rows[1]["psnr_gain_vs_below"] == pytest.approx(np.mean(other) - 20.0)
    assert rows[2]["psnr_gain_vs_below"] is None and rows[2]["psnr_p_vs_below"] is None  # the last row
    assert rows[0]["psnr_bone_mean"] == pytest.approx(np.mean(best) - 3)
    assert np.isnan(rows[0]["psnr_lung_mean"])  # no case gave a lung score
    same = paired_bootstrap_ci(np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    assert same == (1.0, 1.0)


def test_report_trains_scores_writes_and_resumes_without_redoing(tmp_path, volumes, zero_head_model, capsys):
    config = tiny_config(tmp_path, volumes[0])
    out = tmp_path / "report"
    argv = ["report", "--methods", "linear", "cubic", str(config), str(zero_head_model),
            "--test", *map(str, volumes), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "saint_tiny: training" in first and (tmp_path / "run" / "last.pt").is_file()
    with open(out / "methods.csv", newline="") as handle:
        methods = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(methods) == {"linear", "cubic", "saint_tiny", "zero-head"}
    # the zero-head model predicts linear interpolation: the same scores, and its parameters counted
    psnr = {name: float(row["psnr_mean"]) for name, row in methods.items()}
    assert psnr["zero-head"] == pytest.approx(psnr["linear"], abs=1e-3)
    assert float(methods["cubic"]["psnr_between_mean"]) < psnr["cubic"]  # slices off the input are harder
    assert 0 < float(methods["cubic"]["ssim_coronal_mean"]) <= 1 and methods["cubic"]["psnr_lung_mean"]
    assert "| method | PSNR between thick slices | coronal SSIM |" in (out / "report.md").read_text()
    assert int(methods["zero-head"]["parameters"]) > 0 and methods["linear"]["parameters"] == "0"
    with open(out / "cases.csv", newline="") as handle:
        cases = list(csv.DictReader(handle))
    assert len(cases) == 8 and {row["case"] for row in cases} == {"chest1", "chest2"}
    report = (out / "report.md").read_text()
    assert "(2 cases)" in report and "smallest possible p-value is 0.25" in report
    assert "\n| linear | linear interpolation | - | " in report  # method name and network, one row each
    worst = min(psnr, key=psnr.get)
    row = report.split(f"\n| {worst} | ")[1].split("\n")[0]
    assert f" | {max(psnr.values()) - psnr[worst]:.2f} | " in row  # its PSNR below the best's
    assert "6 steps of batch 2, crops 4x16x16" in report and "--methods linear cubic" in report
    assert Image.open(out / "tradeoff.png").size[0] > 400
    provenance = json.loads((out / "report.json").read_text())["provenance"]
    assert provenance["case_names"] == ["chest1", "chest2"] and provenance["left_out"] == []
    assert provenance["device"].startswith(f"cpu ({torch.get_num_threads()} threads); CPU ")
    assert provenance["device"].endswith(f"; torch {torch.__version__}")

    assert "every method timed in this run after one untimed warm-up; other processes used" in report
    share = provenance["other_cpu_share"]
    assert 0 <= share <= 1 and provenance["quiet"] is (share <= 0.05)

    def without_times(text: str) -> list[dict]:
        return [{**row, "seconds_per_volume": None} for row in csv.DictReader(io.StringIO(text))]

    before = (out / "methods.csv").read_text()
    assert main(argv) == 0  # a rerun trains nothing and scores nothing again, and times every method again
    second = capsys.readouterr().out
    assert "training" not in second and second.count("scores kept") == 4
    assert second.count(" s per volume") == 4
    assert without_times((out / "methods.csv").read_text()) == without_times(before)


def test_unfinished_runs_are_left_out_with_no_train(tmp_path, volumes, capsys):
    config = tiny_config(tmp_path, volumes[0])
    out = tmp_path / "report"
    argv = [
        "report",
        "--methods",
        "linear",
        str(config),
        "--test",
        str(volumes[0]),
        "--out",
        str(out),
        "--no-train",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "saint_tiny: trained 0 of 6 steps; left out" in printed
    assert json.loads((out / "report.json").read_text())["provenance"]["left_out"] == ["saint_tiny"]
    assert "Not scored** (training unfinished): saint_tiny." in (out / "report.md").read_text()
    assert not (tmp_path / "run").exists()


def test_report_without_data_or_with_only_unfinished_runs_is_an_error(tmp_path, volumes, capsys):
    assert main(["report", "--methods", "linear", "--out", str(tmp_path / "r")]) == 2
    assert "give the data: --test" in capsys.readouterr().err
    config = tiny_config(tmp_path, volumes[0])
    argv = [
        "report",
        "--methods",
        str(config),
        "--test",
        str(volumes[0]),
        "--out",
        str(tmp_path / "r"),
        "--no-train",
    ]
    assert main(argv) == 2
    assert "no method could be scored" in capsys.readouterr().err


def test_cases_of_the_report_are_the_evaluate_commands(volumes):
    cases = list(pseudo_cases(volumes, 5))
    assert [case.name for case in cases] == ["chest1", "chest2"]
    assert cases[0].truth.shape[0] == (cases[0].thick.shape[0] - 1) * 5 + 1


def test_a_broken_score_record_is_scored_again_and_other_options_are_not_reused(tmp_path, volumes, capsys):
    out = tmp_path / "report"
    argv = ["report", "--methods", "linear", "--test", str(volumes[0]), "--out", str(out)]
    assert main(argv) == 0
    (out / "scores" / "linear.json").write_text("{not json")
    assert main(argv) == 0
    assert "scores kept" not in capsys.readouterr().out
    assert main([*argv, "--tile", "16"]) == 0  # other predictor options: scored again, not reused
    assert "scores kept" not in capsys.readouterr().out
    assert main(argv) == 0 and main(argv) == 0
    assert "linear: scores kept" in capsys.readouterr().out


def test_a_run_folder_of_other_settings_is_refused(tmp_path, volumes, capsys):
    config = tiny_config(tmp_path, volumes[0], steps=2)
    out = str(tmp_path / "report")
    assert main(["report", "--methods", str(config), "--test", str(volumes[0]), "--out", out]) == 0
    config.write_text(config.read_text().replace("lr = 0.003", "lr = 0.002"))
    assert main(["report", "--methods", str(config), "--test", str(volumes[0]), "--out", out]) == 2
    assert "holds a run of other settings (lr: 0.003 -> 0.002)" in capsys.readouterr().err


def test_a_missing_gpu_is_a_message_not_a_traceback(tmp_path, volumes, zero_head_model, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = ["report", "--methods", str(zero_head_model), "--test", str(volumes[0]), "--out", str(tmp_path),
            "--device", "cuda"]  # fmt: skip
    assert main(argv) == 2
    assert "report: error:" in capsys.readouterr().err


def test_commit_marks_changed_code_not_outputs(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout.strip()

    assert git_commit(tmp_path) == "unknown"
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "run.toml").write_text("steps = 2\n")
    git("add", ".")
    git("commit", "-qm", "first")
    commit = git("rev-parse", "--short", "HEAD")
    assert git_commit(tmp_path) == commit
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "report.md").write_text("a report written by the run\n")
    assert git_commit(tmp_path / "docs") == commit  # outputs are not changes
    (tmp_path / "run.toml").write_text("steps = 3\n")
    assert git_commit(tmp_path) == commit + "+changes"
    git("checkout", "run.toml")
    (tmp_path / "docs" / "new.py").write_text("y = 2\n")
    assert git_commit(tmp_path / "docs") == commit + "+changes"  # untracked code counts


# ---- Fig. 3b labels ----

BOUNDS = (0.0, 0.0, 400.0, 300.0)


def test_a_free_label_sits_right_of_its_marker_at_its_height_and_left_at_the_right_edge():
    boxes = place_labels(
        [(100.0, 150.0, 10.0), (390.0, 50.0, 4.0)], [(40.0, 12.0), (30.0, 12.0)], BOUNDS, gap=3.0
    )
    assert boxes[0] == (113.0, 144.0, 153.0, 156.0)
    assert boxes[1] == (353.0, 44.0, 383.0, 56.0)  # no room on the right: beside it on the left


def test_crowded_labels_cover_no_marker_and_no_other_label():
    markers = [(200.0 + 9 * i, 150.0 + 4 * (i % 3), 8.0) for i in range(6)]
    boxes = place_labels(markers, [(60.0, 12.0)] * 6, BOUNDS, gap=3.0)
    discs = [(x - r, y - r, x + r, y + r) for x, y, r in markers]
    for index, box in enumerate(boxes):
        assert BOUNDS[0] <= box[0] and box[2] <= BOUNDS[2] and BOUNDS[1] <= box[1] and box[3] <= BOUNDS[3]
        assert box[2] - box[0] == 60.0 and box[3] - box[1] == 12.0
        for other in discs + boxes[:index] + boxes[index + 1 :]:
            assert not (box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3])
    moved = [box for box, (_, y, _) in zip(boxes, markers, strict=True) if (box[1] + box[3]) / 2 != y]
    assert len(moved) >= 3  # the crowd forces labels off their markers' heights


def test_a_stop_signal_while_the_report_trains_scores_nothing_and_says_how_to_resume(tmp_path, volumes):
    config = tiny_config(tmp_path, volumes[0], steps=100000)
    out = tmp_path / "report"
    argv = ["report", "--methods", "cubic", str(config), "--test", str(volumes[0]), "--out", str(out)]
    process = start_training_cli(argv)
    try:
        wait_for_logged_steps(process, tmp_path / "run", 3)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    step = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["step"]
    assert 3 <= step < 100000
    assert (
        f"volumetricsr-train report: SIGTERM received: {tmp_path / 'run' / 'last.pt'} holds step {step}"
        in err
    )
    assert not out.exists() or not (out / "report.md").exists()  # nothing scored, no report written

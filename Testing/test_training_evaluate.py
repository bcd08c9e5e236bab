"""Evaluation: protocol numbers against a hand computation, baselines on the same slices, p-values."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage, signal

from volumetricsr_training.cli import main
from volumetricsr_training.config import TrainConfig
from volumetricsr_training.evaluate import (
    LoadedModel,
    evaluate,
    markdown_table,
    one_sided_wilcoxon,
    pseudo_cases,
    real_cases,
    validate_model,
    write_results,
)
from volumetricsr_training.trainer import Trainer
from VolumetricSRLib.inference.predictor import PredictOptions
from VolumetricSRLib.intensity import HU_MAX, HU_MIN
from VolumetricSRLib.io.volume_io import write_volume
from VolumetricSRLib.models.tvsrn import TVSRN, TVSRNConfig

RATIO = 5
TINY = TVSRNConfig.tiny(output="residual").to_dict()
BIAS = 0.01  # the test model predicts linear interpolation + 0.01 on the [0, 1] scale
CPU = PredictOptions(device="cpu")


def tiny_thin(seed: int, slices: int = 36) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random HU (multiples of 5, so 5-slice means are whole HU) on a 24 x 24 grid."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(slices, 24, 24)), sigma=(1.5, 2.0, 2.0))
    hu = 5 * np.rint(field / field.std() * 80 - 100)
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])
    affine[:3, 3] = [80.0, 60.0, -100.0 + 10 * seed]
    return hu.astype(np.int16), affine


def biased_linear_model() -> TVSRN:
    model = TVSRN(TVSRNConfig(**TINY))
    with torch.no_grad():
        model.head.bias.fill_(BIAS)
    return model


def loaded(model: TVSRN) -> LoadedModel:
    return LoadedModel(model, "TVSRN (test)", (HU_MIN, HU_MAX), {})


def hand_scores(thin_hu: np.ndarray) -> dict[str, tuple[float, float]]:
    """PSNR / SSIM of the three methods, computed here from the protocol's definition."""
    unit = lambda hu: np.clip((np.asarray(hu, np.float64) + 1024) / 3072, 0, 1)  # noqa: E731
    count = thin_hu.shape[0] // RATIO
    thick = unit(thin_hu[: count * RATIO].astype(np.float64).reshape(count, RATIO, 24, 24).mean(axis=1))
    truth = unit(thin_hu[2 : 2 + (count - 1) * RATIO + 1])
    below = np.minimum(np.arange(truth.shape[0]) // RATIO, count - 2)
    weight = (np.arange(truth.shape[0]) - RATIO * below)[:, None, None] / RATIO
    linear = (1 - weight) * thick[below] + weight * thick[below + 1]
    grid = np.meshgrid(np.arange(truth.shape[0]) / RATIO, np.arange(24), np.arange(24), indexing="ij")
    methods = {
        "model": np.clip(linear + BIAS, 0, 1),
        "linear": linear,
        "cubic": np.clip(ndimage.map_coordinates(thick, grid, order=3, mode="mirror"), 0, 1),
    }
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / g.sum() ** 2

    def ssim(a: np.ndarray, b: np.ndarray) -> float:
        blur = lambda x: signal.convolve2d(x, window, mode="same")  # noqa: E731
        ma, mb = blur(a), blur(b)
        va, vb, cov = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
        c1, c2 = 0.01**2, 0.03**2
        return float((((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())

    kept = slice(5, truth.shape[0] - 5)
    return {
        name: (
            -10 * math.log10(np.mean((pred[kept] - truth[kept]) ** 2)),
            float(np.mean([ssim(p, t) for p, t in zip(pred[kept], truth[kept], strict=True)])),
        )
        for name, pred in methods.items()
    }


@pytest.fixture
def thin_files(tmp_path):
    folder = tmp_path / "thin"
    folder.mkdir()
    paths = []
    for seed in range(3):
        hu, affine = tiny_thin(seed)
        paths.append(write_volume(folder / f"case{seed}.nii.gz", hu, affine))
    return paths


def test_protocol_numbers_match_a_hand_computation(thin_files):
    rows, summary = evaluate(loaded(biased_linear_model()), pseudo_cases(thin_files, RATIO), CPU)
    assert [(r["case"], r["method"]) for r in rows[:3]] == [
        ("case0", m) for m in ("model", "linear", "cubic")
    ]
    expected = {}
    for seed, path in enumerate(thin_files):
        hand = hand_scores(tiny_thin(seed)[0])
        for row in (r for r in rows if r["case"] == path.name[:-7]):
            assert row["psnr"] == pytest.approx(hand[row["method"]][0], abs=2e-4), row
            assert row["ssim"] == pytest.approx(hand[row["method"]][1], abs=2e-6), row
            assert (row["thick_slices"], row["scored_slices"], row["thick_spacing_mm"]) == (7, 21, 5.0)
            expected.setdefault(row["method"], []).append(hand[row["method"]])
    assert summary["n"] == 3
    for method, values in expected.items():
        psnr = np.array([v[0] for v in values])
        stats = summary["methods"][method]
        assert stats["psnr_mean"] == pytest.approx(psnr.mean(), abs=2e-4)
        assert stats["psnr_std"] == pytest.approx(np.sqrt(np.mean((psnr - psnr.mean()) ** 2)), abs=2e-4)
    for baseline in ("linear", "cubic"):
        for index, metric in enumerate(("psnr", "ssim")):
            differences = [model[index] - base[index] for model, base in
                           zip(expected["model"], expected[baseline], strict=True)]  # fmt: skip
            p = summary["wilcoxon_greater"][baseline][f"{metric}_p"]
            assert p == pytest.approx(exact_signed_rank_p(differences)), (baseline, metric)
    margins = [m[0] - c[0] for m, c in zip(expected["model"], expected["cubic"], strict=True)]
    assert summary["model_minus_cubic_psnr"]["min"] == pytest.approx(min(margins), abs=4e-4)
    assert "too few cases" in summary["significance_note"] and "0.125" in summary["significance_note"]


def exact_signed_rank_p(differences: list[float]) -> float:
    """P(W+ >= observed W+) over all 2^n sign patterns (no ties, no zeros)."""
    ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    observed = ranks[np.array(differences) > 0].sum()
    patterns = itertools.product((0, 1), repeat=len(differences))
    totals = [sum(r for r, sign in zip(ranks, pattern, strict=True) if sign) for pattern in patterns]
    return float(np.mean([total >= observed for total in totals]))


def test_one_sided_wilcoxon_matches_the_exact_distribution():
    baseline = np.array([30.0, 31.0, 32.0])
    # all three differences positive: only 1 of the 8 sign patterns is as extreme, p = 1/8
    assert one_sided_wilcoxon(baseline + np.array([0.5, 1.0, 1.5]), baseline) == pytest.approx(0.125)
    # ranks 1 (negative), 2, 3: W+ = 5, reached or passed by 2 of 8 patterns, p = 1/4
    assert one_sided_wilcoxon(baseline + np.array([-0.5, 1.0, 1.5]), baseline) == pytest.approx(0.25)
    assert one_sided_wilcoxon(baseline, baseline) == 1.0


def test_results_files_and_the_readme_table(thin_files, tmp_path):
    rows, summary = evaluate(loaded(biased_linear_model()), pseudo_cases(thin_files, RATIO), CPU)
    written = write_results(rows, summary, tmp_path / "eval", "TVSRN (test)")
    assert [p.name for p in written] == ["cases.csv", "summary.json", "summary.md"]
    with open(written[0], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 9 and float(table[0]["psnr"]) == pytest.approx(rows[0]["psnr"])
    assert json.loads(written[1].read_text())["methods"] == summary["methods"]
    text = markdown_table(summary, "TVSRN (test)")
    lines = text.splitlines()
    assert lines[0] == "| method | PSNR (dB) | SSIM |"
    m = summary["methods"]["model"]
    assert lines[2] == (
        f"| TVSRN (test) | {m['psnr_mean']:.2f} ± {m['psnr_std']:.2f} | "
        f"{m['ssim_mean']:.4f} ± {m['ssim_std']:.4f} |"
    )
    assert lines[3].startswith("| cubic B-spline interpolation |") and lines[4].startswith("| linear")
    assert "n = 3 cases" in text and "p < 0.001" in text
    assert written[2].read_text() == text + "\n"


def test_real_pairs_are_scored_by_world_position(tmp_path, thin_files):
    """A thin series with 4 extra leading slices: the thick lies on thin slice 6 + 5 k, not 2 + 5 k."""
    hu, affine = tiny_thin(0)
    shifted = affine.copy()
    shifted[2, 3] -= 4.0  # the thin series starts 4 mm (4 slices) lower
    pseudo = next(pseudo_cases([thin_files[0]], RATIO))
    (tmp_path / "data" / "test" / "1mm").mkdir(parents=True)
    (tmp_path / "data" / "test" / "5mm").mkdir(parents=True)
    thin_series = np.concatenate([np.full((4, 24, 24), -500, np.int16), hu])
    write_volume(tmp_path / "data" / "test" / "1mm" / "case0.nii.gz", thin_series, shifted)
    write_volume(tmp_path / "data" / "test" / "5mm" / "case0.nii.gz",
                 pseudo.thick.astype(np.int16), pseudo.thick_affine)  # fmt: skip
    (real,) = list(real_cases(tmp_path / "data", "test", RATIO, 4))
    assert np.array_equal(real.truth, np.clip(pseudo.truth, HU_MIN, HU_MAX))  # stored within the window
    model = loaded(biased_linear_model())
    real_rows, _ = evaluate(model, [real], CPU)
    pseudo_rows, _ = evaluate(model, [pseudo], CPU)
    assert [(r["psnr"], r["ssim"]) for r in real_rows] == [(r["psnr"], r["ssim"]) for r in pseudo_rows]


def test_validation_during_training_uses_the_same_protocol(thin_files):
    model = biased_linear_model()
    cfg = TrainConfig(model=TINY, val_volumes=[str(p) for p in thin_files], device="cpu")
    scores = validate_model(model, cfg)
    _, summary = evaluate(loaded(model), pseudo_cases(thin_files, RATIO), CPU)
    assert scores["psnr"] == pytest.approx(summary["methods"]["model"]["psnr_mean"], abs=1e-9)
    assert scores["ssim"] == pytest.approx(summary["methods"]["model"]["ssim_mean"], abs=1e-9)


def test_evaluate_command_on_a_checkpoint(thin_files, tmp_path, capsys):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), model=TINY, device="cpu", plot=False)
    trainer = Trainer(cfg)
    with torch.no_grad():
        trainer.model.head.bias.fill_(BIAS)
    trainer.save("last")
    folder = thin_files[0].parent
    code = main(["evaluate", "--model", str(tmp_path / "run" / "last.pt"), "--volumes", str(folder),
                 "--out", str(tmp_path / "eval"), "--device", "cpu"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| TVSRN (last.pt, step 0) |" in printed and "| linear interpolation |" in printed
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n"] == 3 and "pseudo pairs (box slab" in summary["data"]
    assert summary["command"].startswith("volumetricsr-train evaluate --model")
    assert summary["methods"]["cubic"]["psnr_mean"] == pytest.approx(
        np.mean([hand_scores(tiny_thin(s)[0])["cubic"][0] for s in range(3)]), abs=2e-4
    )


def test_evaluate_command_reports_bad_input(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "none.pt"), "--volumes", str(tmp_path),
                 "--out", str(tmp_path / "eval")])  # fmt: skip
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_evaluate_reads_a_dicom_series_folder_as_one_case(tmp_path, capsys):
    from dicom_series import thick_positions, write_series

    from VolumetricSRLib.io.volume_io import read_volume

    hu, _ = tiny_thin(4)
    series = tmp_path / "dicom" / "chest"
    stored = (hu + 1024).astype(np.uint16)
    write_series(series, stored, thick_positions(36, (0, 0, 1.0)), pixel_spacing=(0.7, 0.7))
    as_nifti = tmp_path / "nifti" / "chest.nii.gz"
    as_nifti.parent.mkdir()
    volume = read_volume(series)
    write_volume(as_nifti, volume.array, volume.affine)
    model = str(tmp_path / "model.pt")
    Trainer(TrainConfig(run_dir=str(tmp_path), model=TINY, device="cpu", plot=False)).save("model")

    def evaluate_command(source, out: str) -> int:
        return main(["evaluate", "--model", model, "--volumes", str(source), "--out", str(tmp_path / out),
                     "--device", "cpu"])  # fmt: skip

    assert evaluate_command(series, "from_dicom") == evaluate_command(as_nifti, "from_nifti") == 0
    capsys.readouterr()
    dicom, nifti = (
        json.loads((tmp_path / out / "summary.json").read_text()) for out in ("from_dicom", "from_nifti")
    )
    assert dicom["cases"] == nifti["cases"] == ["chest"]
    assert dicom["methods"] == nifti["methods"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert evaluate_command(empty, "bad") == 2
    assert "DICOM" in capsys.readouterr().err and not (tmp_path / "bad").exists()

"""Dataset analysis (paper Fig. 1): Match / Near / Far figures, world-position matching, the command."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from volumetricsr_training.cli import main
from volumetricsr_training.dataset_analysis import (
    AnalysisCase,
    analyse_case,
    match_slices,
    pseudo_case,
    summarize,
)
from volumetricsr_training.rplhr import PairMismatch
from VolumetricSRLib.io.volume_io import write_volume

RATIO = 5
ROWS, COLS = 12, 16
# Thin slice n holds HU -1024 + 3 (10 n^2 + 50), i.e. (10 n^2 + 50) / 1024 on the [0, 1] scale (exact in
# float32). A box slab of 5 slices centred on c averages n^2 to c^2 + 2, so the thick slice on thin slice c
# is (10 (c^2 + 2) + 50) / 1024, and thick minus thin slice n is 10 (c^2 + 2 - n^2) / 1024. With two thick
# slices (c = 2 and 7) the differences, in units of 10 / 1024, are:
HAND_DIFFERENCES = {"Match": [2, 2], "Near": [5, -3, 15, -13], "Far": [6, -10, 26, -30]}


def quadratic_thin(slices: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Constant slices with the HU above, and an LPS-like affine (0.7 mm pixels, 1 mm slices)."""
    n = np.arange(slices, dtype=np.float64)
    hu = -1024 + 3 * (10 * n**2 + 50)
    thin = np.broadcast_to(hu[:, None, None], (slices, ROWS, COLS)).astype(np.int16)
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])
    affine[:3, 3] = [120.0, 95.0, -310.0]
    return thin, affine


def constant_ssim(u: float, v: float) -> float:
    """SSIM of two constant images by hand: with zero padding the local means are u w and v w, the
    variances u^2 w (1 - w) and v^2 w (1 - w), the covariance u v w (1 - w), where w is the part of the
    11 x 11 Gaussian window (sigma 1.5) that lies inside the image."""
    taps = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
    taps /= taps.sum()

    def inside(size: int) -> np.ndarray:
        return np.array(
            [
                sum(t for o, t in zip(range(-5, 6), taps, strict=True) if 0 <= p + o < size)
                for p in range(size)
            ]
        )

    w = np.outer(inside(ROWS), inside(COLS))
    c1, c2 = 0.01**2, 0.03**2
    spread = w * (1 - w)
    ssim = ((2 * u * v * w**2 + c1) * (2 * u * v * spread + c2)) / (
        ((u * u + v * v) * w**2 + c1) * ((u * u + v * v) * spread + c2)
    )
    return float(ssim.mean())


def hand_figures() -> dict[str, tuple[list[float], list[float]]]:
    """Category -> (PSNRs, SSIMs) of every slice pair, computed from HAND_DIFFERENCES."""
    figures = {}
    for category, differences in HAND_DIFFERENCES.items():
        thick = {"Match": [2, 7], "Near": [2, 2, 7, 7], "Far": [2, 2, 7, 7]}[category]
        psnrs = [20 * math.log10(1024 / (10 * abs(d))) for d in differences]
        ssims = []
        for c, d in zip(thick, differences, strict=True):
            u = (10 * (c * c + 2) + 50) / 1024
            ssims.append(constant_ssim(u, u - 10 * d / 1024))
        figures[category] = (psnrs, ssims)
    return figures


def test_match_near_far_figures_equal_a_hand_computation():
    thin, affine = quadratic_thin()
    rows, info = analyse_case(pseudo_case("train", "quadratic", thin, affine, RATIO))
    assert [(r["category"], r["thick_slice"], r["thin_slice"], r["offset_mm"]) for r in rows] == [
        ("Match", 0, 2, 0.0),
        ("Near", 0, 1, -1.0),
        ("Near", 0, 3, 1.0),
        ("Far", 0, 0, -2.0),
        ("Far", 0, 4, 2.0),
        ("Match", 1, 7, 0.0),
        ("Near", 1, 6, -1.0),
        ("Near", 1, 8, 1.0),
        ("Far", 1, 5, -2.0),
        ("Far", 1, 9, 2.0),
    ]
    assert (info.thick_used, info.thick_total, info.thin_spacing_mm, info.thick_spacing_mm) == (
        2,
        2,
        1.0,
        5.0,
    )
    hand = hand_figures()
    summary = {(s["split"], s["category"]): s for s in summarize(rows)}
    for category, (psnrs, ssims) in hand.items():
        got = [r for r in rows if r["category"] == category]
        assert [r["psnr"] for r in got] == pytest.approx(psnrs, abs=1e-9)
        assert [r["ssim"] for r in got] == pytest.approx(ssims, abs=1e-9)
        for split in ("train", "all"):
            s = summary[split, category]
            assert (s["cases"], s["pairs"], s["identical"]) == (1, len(psnrs), 0)
            assert s["psnr_mean"] == pytest.approx(np.mean(psnrs), abs=1e-9)
            assert s["psnr_std"] == pytest.approx(np.std(psnrs), abs=1e-9)
            assert s["ssim_mean"] == pytest.approx(np.mean(ssims), abs=1e-9)
    assert summary["train", "Match"]["psnr_mean"] == pytest.approx(20 * math.log10(1024 / 20), abs=1e-9)
    assert summary["train", "Match"]["psnr_std"] == pytest.approx(0.0, abs=1e-9)


def test_identical_slices_are_counted_and_left_out_of_the_psnr_mean():
    rows = [
        {"split": "val", "case": "a", "category": "Match", "psnr": math.inf, "ssim": 1.0},
        {"split": "val", "case": "b", "category": "Match", "psnr": 30.0, "ssim": 0.5},
    ]
    (val, total) = summarize(rows)
    assert (val["split"], total["split"]) == ("val", "all")
    assert (val["pairs"], val["identical"], val["psnr_mean"], val["ssim_mean"]) == (2, 1, 30.0, 0.75)


def test_a_flipped_thin_grid_matches_the_same_world_positions():
    thin, affine = quadratic_thin()
    case = pseudo_case("test", "upright", thin, affine, RATIO)
    flipped_affine = affine.copy()
    flipped_affine[:3, 2] = -affine[:3, 2]
    flipped_affine[:3, 3] = affine[:3, :3] @ [0, 0, thin.shape[0] - 1] + affine[:3, 3]
    flipped = AnalysisCase(
        "test", "flipped", case.thick, case.thick_affine, case.thin[::-1], flipped_affine, "reversed"
    )
    assert match_slices(case.thick.shape, case.thick_affine, flipped.thin.shape, flipped_affine) == [
        (0, 7),
        (1, 2),
    ]
    upright_rows, _ = analyse_case(case)
    flipped_rows, _ = analyse_case(flipped)
    key = lambda r: (r["thick_slice"], r["offset_mm"])  # noqa: E731
    for up, down in zip(sorted(upright_rows, key=key), sorted(flipped_rows, key=key), strict=True):
        assert down["thin_slice"] == thin.shape[0] - 1 - up["thin_slice"]
        assert (down["category"], down["psnr"], down["ssim"]) == (up["category"], up["psnr"], up["ssim"])


def test_an_offset_grid_matches_by_world_position_and_skips_thick_slices_outside():
    thin, affine = quadratic_thin(20)
    case = pseudo_case("train", "full", thin, affine, RATIO)  # thick slices on thin 2, 7, 12, 17
    cut_affine = affine.copy()
    cut_affine[:3, 3] = affine[:3, :3] @ [0, 0, 4] + affine[:3, 3]  # the thin series starts at thin 4
    cut = thin[4:17]  # thin 4 ... 16: thick slices 0 and 3 lie outside
    assert match_slices(case.thick.shape, case.thick_affine, cut.shape, cut_affine) == [(1, 3), (2, 8)]
    rows, info = analyse_case(
        AnalysisCase("train", "cut", case.thick, case.thick_affine, cut, cut_affine, "")
    )
    assert (info.thick_used, info.thick_total) == (2, 4)
    full_rows, _ = analyse_case(case)
    expected = [(r["category"], r["psnr"]) for r in full_rows if r["thick_slice"] in (1, 2)]
    assert [(r["category"], r["psnr"]) for r in rows] == expected
    assert {r["thin_slice"] for r in rows} == set(range(1, 11))


def test_no_thin_slice_at_a_thick_slice_is_refused_with_a_clear_message():
    thin, affine = quadratic_thin()
    case = pseudo_case("train", "q", thin, affine, RATIO)
    between = case.thick_affine.copy()
    between[2, 3] += 0.5  # half a thin slice along the slice axis
    with pytest.raises(
        PairMismatch, match=r"thick slice 0 lies at thin slice 2\.500, 0\.5 mm .* no thin slice"
    ):
        match_slices(case.thick.shape, between, thin.shape, affine)
    moved = case.thick_affine.copy()
    moved[0, 3] += 3 * affine[0, 0]  # three columns across
    with pytest.raises(PairMismatch, match="misaligned: thick slices lie up to 3 pixels off"):
        match_slices(case.thick.shape, moved, thin.shape, affine)
    with pytest.raises(PairMismatch, match="different in-plane grids"):
        match_slices((2, ROWS, COLS - 1), case.thick_affine, thin.shape, affine)
    away = case.thick_affine.copy()
    away[2, 3] += 100.0
    with pytest.raises(PairMismatch, match="none of the 2 thick slices lies inside the thin series"):
        match_slices(case.thick.shape, away, thin.shape, affine)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def assert_outputs(out: Path, argv: list[str], slice_pairs: int, summary_rows: int) -> list[dict]:
    """The four files exist (nothing half-written left) and hold the command; returns the slice rows."""
    names = sorted(p.name for p in out.iterdir())
    assert names == ["slice_pairs.csv", "summary.csv", "summary.md", "summary.png"]
    assert (out / "summary.png").read_bytes().startswith(b"\x89PNG")
    markdown = (out / "summary.md").read_text()
    assert "volumetricsr-train analyse-dataset " + " ".join(argv[1:]) in markdown
    assert "| split | category | thin slices away | cases | slice pairs | PSNR (dB) | SSIM |" in markdown
    assert len(read_csv(out / "summary.csv")) == summary_rows
    rows = read_csv(out / "slice_pairs.csv")
    assert len(rows) == slice_pairs
    return rows


def test_the_command_on_pseudo_pairs_writes_the_table_csv_and_plot(tmp_path, capsys):
    from VolumetricSRLib.phantom import chest_phantom

    phantom, phantom_affine = chest_phantom((30, 32, 32), seed=1)
    write_volume(tmp_path / "chest.nii.gz", phantom, phantom_affine)
    thin, affine = quadratic_thin()
    write_volume(tmp_path / "quadratic.nii.gz", thin, affine)
    out = tmp_path / "analysis"
    argv = ["analyse-dataset", "--train", str(tmp_path / "chest.nii.gz")]
    argv += ["--test", str(tmp_path / "quadratic.nii.gz"), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "train/chest: 6 of 6 thick slices matched" in printed
    assert "| all | Far | -2 / +2 | 2 | 16 |" in printed
    rows = assert_outputs(out, argv, slice_pairs=6 * 5 + 2 * 5, summary_rows=9)
    test_match = [float(r["psnr"]) for r in rows if r["split"] == "test" and r["category"] == "Match"]
    assert test_match == pytest.approx([20 * math.log10(1024 / 20)] * 2, abs=1e-5)
    chest = [r for r in rows if r["case"] == "chest"]
    match, near, far = (
        np.mean([float(r["psnr"]) for r in chest if r["category"] == c]) for c in ("Match", "Near", "Far")
    )
    assert match > near > far  # a real-looking volume: the farther the thin slice, the lower the PSNR
    summary = (out / "summary.md").read_text()
    assert "Match > Near > Far here follows from the simulation" in summary  # no claim a box slab makes true


def write_pair(root: Path, case: str, thick: np.ndarray, thick_affine: np.ndarray) -> None:
    thin, affine = quadratic_thin()
    for kind, array, grid in (("1mm", thin, affine), ("5mm", thick, thick_affine)):
        (root / "train" / kind).mkdir(parents=True, exist_ok=True)
        write_volume(root / "train" / kind / f"{case}.nii.gz", np.asarray(array, dtype=np.int16), grid)


def test_the_command_on_real_pairs_and_a_misaligned_one(tmp_path, capsys):
    thin, affine = quadratic_thin()
    case = pseudo_case("train", "q", thin, affine, RATIO)
    write_pair(tmp_path / "data", "case01", case.thick, case.thick_affine)
    out = tmp_path / "analysis"
    argv = ["analyse-dataset", "--rplhr", str(tmp_path / "data"), "--splits", "train", "--out", str(out)]
    assert main(argv) == 0
    rows = assert_outputs(out, argv, slice_pairs=10, summary_rows=6)
    hand = hand_figures()
    for category, (psnrs, _) in hand.items():
        assert [float(r["psnr"]) for r in rows if r["category"] == category] == pytest.approx(psnrs, abs=1e-5)
    assert "follows from the simulation" not in (out / "summary.md").read_text()  # real pairs: a finding
    capsys.readouterr()

    between = case.thick_affine.copy()
    between[2, 3] += 0.5
    write_pair(tmp_path / "data", "case02", case.thick, between)
    assert main([*argv[:-1], str(tmp_path / "again")]) == 2
    error = capsys.readouterr().err
    assert "train/case02" in error and "between two thin slices" in error
    assert not (tmp_path / "again").exists()


def test_the_command_needs_exactly_one_kind_of_data(tmp_path, capsys):
    assert main(["analyse-dataset", "--out", str(tmp_path)]) == 2
    both = ["analyse-dataset", "--rplhr", str(tmp_path), "--val", str(tmp_path), "--out", str(tmp_path)]
    assert main(both) == 2
    assert "give either --rplhr ROOT (real pairs) or thin volumes" in capsys.readouterr().err

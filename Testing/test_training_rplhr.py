"""RPLHR-CT layout: pairs matched through the affines, a report for every misfit, real-pair crops."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from conftest import phantom_ct
from volumetricsr_training.cli import main
from volumetricsr_training.config import TrainConfig
from volumetricsr_training.data import BODY_LEVEL
from volumetricsr_training.rplhr import (
    DatasetError,
    RealPairSampler,
    check_dataset,
    check_split,
    load_split,
)
from volumetricsr_training.trainer import Trainer
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models.tvsrn import TVSRNConfig

RATIO = 5
TINY = TVSRNConfig.tiny().to_dict()


def write_pair(root: Path, split: str, case: str, thin, thin_affine, thick, thick_affine) -> None:
    for kind, array, affine in (("1mm", thin, thin_affine), ("5mm", thick, thick_affine)):
        folder = root / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        write_volume(folder / f"{case}.nii.gz", np.asarray(array), affine)


def ramp_pair(
    thin_slices: int = 48, skip: int = 3, rows: int = 20, cols: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A thin series whose values encode the slice's world z, and a thick series lying on thin slices
    skip, skip + 5, ... (the thick keeps the value of the thin slice it lies on)."""
    k, j, i = np.meshgrid(np.arange(thin_slices), np.arange(rows), np.arange(cols), indexing="ij")
    thin = (10 * k + 2 * j + i - 900).astype(np.int16)
    thin_affine = np.diag([-0.8, -0.8, 1.0, 1.0])
    thin_affine[:3, 3] = [100.0, 80.0, -250.0]
    thick = thin[skip::RATIO]
    thick_affine = thin_affine.copy()
    thick_affine[2, 2] = RATIO * 1.0
    thick_affine[2, 3] += skip
    return thin, thin_affine, np.ascontiguousarray(thick), thick_affine


def make_pairs_from_real_ct(root: Path, split: str = "train") -> Path:
    source = phantom_ct()
    assert main(["make-pairs", "--volumes", str(source), "--out", str(root), "--split", split]) == 0
    return source


def test_make_pairs_writes_a_layout_that_checks_out(tmp_path, capsys):
    source = make_pairs_from_real_ct(tmp_path)
    report = check_dataset(tmp_path, ("train",), ratio=RATIO)
    assert report.ok, report.text()
    (pair,) = report.pairs
    assert pair.case == "phantom_chest_3mm"
    assert (pair.match.ratio, pair.match.offset, pair.match.count) == (RATIO, 2, 6)
    thin = read_volume(pair.thin_path)
    assert np.array_equal(thin.array, read_volume(source).array)
    thick = read_volume(pair.thick_path)
    assert thick.array.dtype == np.int16
    assert np.abs(thick.array[1] - thin.array[5:10].mean(axis=0)).max() <= 0.5
    assert main(["check-data", str(tmp_path), "--splits", "train", "--ratio", "5"]) == 0
    assert "1 pairs fit, 0 problems" in capsys.readouterr().out


def test_pairs_are_matched_by_world_position_not_by_index(tmp_path):
    thin, thin_affine, thick, thick_affine = ramp_pair(thin_slices=48, skip=3)
    write_pair(tmp_path, "train", "shifted_start", thin, thin_affine, thick, thick_affine)
    # thin series cut short: the last thick slices have no thin slice under them
    write_pair(tmp_path, "train", "short_thin", thin[:30], thin_affine, thick, thick_affine)
    report = check_split(tmp_path, "train", RATIO)
    assert report.ok, report.text()
    matches = {p.case: p.match for p in report.pairs}
    assert (matches["shifted_start"].offset, matches["shifted_start"].count) == (3, 9)
    assert (matches["short_thin"].first, matches["short_thin"].stop) == (0, 6)
    assert "3 of 9 thick slices lie outside the thin series" in report.text()
    pairs, _ = load_split(tmp_path, "train", RATIO, 4)
    for pair in pairs:
        assert np.array_equal(pair.thick, pair.thin[::RATIO])
        assert np.allclose(pair.thick_affine[:3, 3], thin_affine[:3, 3] + [0, 0, 3])


def test_a_malformed_dataset_gets_one_report_naming_every_case(tmp_path, capsys):
    thin, thin_affine, thick, thick_affine = ramp_pair()
    write_pair(tmp_path, "train", "good", thin, thin_affine, thick, thick_affine)
    write_pair(tmp_path, "train", "grid", thin, thin_affine, thick[:, :, :16], thick_affine)
    half = thick_affine.copy()
    half[2, 3] += 0.5
    write_pair(tmp_path, "train", "between", thin, thin_affine, thick, half)
    stretched = thick_affine.copy()
    stretched[2, 2] = 2.5
    write_pair(tmp_path, "train", "ratio", thin, thin_affine, thick, stretched)
    moved = thick_affine.copy()
    moved[0, 3] += 5 * thin_affine[0, 0]  # five columns across
    write_pair(tmp_path, "train", "moved", thin, thin_affine, thick, moved)
    write_volume(tmp_path / "train" / "1mm" / "lonely.nii.gz", thin, thin_affine)
    (tmp_path / "train" / "5mm" / "broken.nii.gz").write_bytes(gzip.compress(b"not a nifti header"))
    write_volume(tmp_path / "train" / "1mm" / "broken.nii.gz", thin, thin_affine)
    (tmp_path / "train" / "5mm" / "notes.txt").write_text("scanner protocol")
    (tmp_path / "val" / "1mm").mkdir(parents=True)

    report = check_dataset(tmp_path, ("train", "val"), ratio=RATIO)
    reasons = {(p.split, p.case): p.reason for p in report.problems}
    assert [p.case for p in report.pairs] == ["good"]
    assert "different in-plane grids" in reasons["train", "grid"]
    assert "between two thin slices" in reasons["train", "between"]
    assert "non-integer ratio" in reasons["train", "ratio"] and "2.5" in reasons["train", "ratio"]
    assert "in-plane origins differ by 5 columns" in reasons["train", "moved"]
    assert "missing partner" in reasons["train", "lonely"]
    assert "unreadable" in reasons["train", "broken"]
    assert "not a NIfTI file" in reasons["train", "notes.txt"]
    assert "missing folder" in reasons["val", "*"] and "5mm" in reasons["val", "*"]
    assert len(report.problems) == 8

    assert main(["check-data", str(tmp_path), "--splits", "train", "val"]) == 1
    printed = capsys.readouterr().out
    for case in ("grid", "between", "ratio", "moved", "lonely", "broken", "notes.txt"):
        assert f"train/{case}:" in printed

    with pytest.raises(DatasetError, match="rplhr_skip_invalid") as error:
        load_split(tmp_path, "train", RATIO, 4)
    assert "train/between" in str(error.value) and "train/lonely" in str(error.value)
    pairs, _ = load_split(tmp_path, "train", RATIO, 4, skip_invalid=True)
    assert [p.case for p in pairs] == ["good"]


def test_training_on_a_bad_dataset_stops_before_the_first_step(tmp_path):
    thin, thin_affine, thick, thick_affine = ramp_pair()
    write_pair(tmp_path / "data", "train", "good", thin, thin_affine, thick, thick_affine)
    write_volume(tmp_path / "data" / "train" / "5mm" / "orphan.nii.gz", thick, thick_affine)
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), model=TINY, rplhr_root=str(tmp_path / "data"),
                      crop=[4, 16, 16], steps=3, device="cpu", progress=False)  # fmt: skip
    with pytest.raises(DatasetError, match="train/orphan: missing partner"):
        Trainer(cfg).run()
    assert not (tmp_path / "run" / "last.pt").exists()


def test_real_pair_crops_lie_on_each_other_at_every_scale(tmp_path):
    thin, thin_affine, thick, thick_affine = ramp_pair(thin_slices=60, skip=4, rows=36, cols=36)
    write_pair(tmp_path, "train", "ramp", thin, thin_affine, thick, thick_affine)
    pairs, _ = load_split(tmp_path, "train", RATIO, 4)
    sampler = RealPairSampler(pairs, (4, 8, 8), inplane_scales=[1, 2], min_body_fraction=0.0)
    thick_crops, thin_crops = sampler.batch(seed=1, rank=0, step=5, size=24)
    assert thick_crops.shape == (24, 4, 8, 8) and thin_crops.shape == (24, 16, 8, 8)
    assert np.allclose(thick_crops, thin_crops[:, ::RATIO], atol=1e-6)
    row_steps = np.round((thin_crops[:, 0, 1, 0] - thin_crops[:, 0, 0, 0]) * 3072, 1)
    assert set(row_steps) == {2.0, 4.0}  # both in-plane scales were drawn (2 HU per row, 4 at scale 2)
    with pytest.raises(ValueError, match="smaller than one crop"):
        RealPairSampler(pairs, (4, 32, 32), inplane_scales=[2])


def test_training_runs_on_real_pairs(tmp_path):
    make_pairs_from_real_ct(tmp_path / "data")
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), model=TINY, rplhr_root=str(tmp_path / "data"),
                      crop=[4, 16, 16], steps=3, log_every=1, device="cpu", progress=False,
                      tensorboard=False, threads=1)  # fmt: skip
    trainer = Trainer(cfg)
    trainer.run()
    assert trainer.step == 3 and (tmp_path / "run" / "last.pt").exists()
    _, thin = trainer.sampler.batch(0, 0, 0, 2)
    assert (thin > BODY_LEVEL).mean() >= cfg.min_body_fraction

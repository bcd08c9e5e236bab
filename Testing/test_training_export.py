"""Export: a checkpoint becomes a model file pair the core loads, with an honest model card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import phantom_ct
from volumetricsr_training.cli import main
from volumetricsr_training.config import TrainConfig
from volumetricsr_training.evaluate import load_for_evaluation
from volumetricsr_training.export import export_checkpoint, read_metrics
from volumetricsr_training.pseudo_pairs import make_pseudo_pair
from volumetricsr_training.trainer import Trainer, state_digest
from VolumetricSRLib.app.cli import main as core_main
from VolumetricSRLib.intensity import to_int16_hu
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models.tvsrn import TVSRNConfig
from VolumetricSRLib.models.weights import ModelFileError, load_model

TINY = TVSRNConfig.tiny(output="residual").to_dict()


@pytest.fixture
def run(tmp_path):
    """A 3-step run on pseudo pairs of a real CT volume: its folder and final weights digest."""
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"), model=TINY, train_volumes=[str(phantom_ct())], crop=[4, 16, 16],
        steps=3, log_every=1, device="cpu", threads=1, progress=False, tensorboard=False, plot=False,
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.run()
    return tmp_path / "run", state_digest(trainer.model)


def summary_file(tmp_path, digest: str):
    """An evaluation summary as `evaluate` writes it, for the weights with this digest."""
    methods = {"model": {"psnr_mean": 30.0}, "cubic": {"psnr_mean": 28.5}, "linear": {"psnr_mean": 28.0}}
    model = {"label": "TVSRN (last.pt, step 3)", "checkpoint": "last.pt", "weights_digest": digest}
    summary = {"n": 1, "model": model, "cases": ["pulmonary"], "methods": methods}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    return path


def test_export_round_trip_through_the_core_loader(run, tmp_path):
    run_dir, digest = run
    models = tmp_path / "Models"
    models.mkdir()
    metrics = read_metrics([f"test={summary_file(tmp_path, digest)}"])
    card_path = export_checkpoint(
        run_dir / "last.pt", models, id="tvsrn-test", name="TVSRN test", metrics=metrics, set_default=True
    )
    assert card_path == models / "tvsrn-test.json" and (models / "tvsrn-test.safetensors").exists()
    network, card = load_model(card_path)
    assert state_digest(network) == digest
    assert card.trained and card.ratio == 5 and card.thick_spacing_mm == 5.0 and card.thin_spacing_mm == 1.0
    training = card.training
    assert (
        training["steps"] == 3
        and training["minutes"] is not None
        and training["hardware"] == "cpu (1 threads)"
    )
    assert training["data"]["thin_volumes"] == ["phantom_chest_3mm.nii.gz"] and training["data"][
        "thin_slice_mm"
    ] == [3.0]
    assert "not RPLHR-CT" in training["data"]["kind"] and "simulated" in training["data"]["thick_slices"]
    assert training["schedule"]["optimizer"] == "adamw" and training["schedule"]["crop"] == [4, 16, 16]
    assert (
        "not trained on RPLHR-CT" in card.description
        and "phantom_chest_3mm.nii.gz (3 mm slices)" in card.description
    )
    written = json.loads(summary_file(tmp_path, digest).read_text())
    assert card.metrics == {"test": written} and card.metrics["test"]["model"]["weights_digest"] == digest
    assert (models / "default.txt").read_text() == "tvsrn-test\n"
    # the checkpoint and the exported file are the same model to the evaluator
    from_checkpoint = load_for_evaluation(run_dir / "last.pt").network
    assert state_digest(from_checkpoint) == state_digest(load_for_evaluation(card_path).network)


def test_export_never_overwrites_without_being_asked(run, tmp_path):
    run_dir, _ = run
    models = tmp_path / "Models"
    models.mkdir()
    export_checkpoint(run_dir / "last.pt", models, id="tvsrn-test", name="first")
    before = (models / "tvsrn-test.json").read_bytes()
    with pytest.raises(ModelFileError, match="already exists"):
        export_checkpoint(run_dir / "last.pt", models, id="tvsrn-test", name="second")
    assert (models / "tvsrn-test.json").read_bytes() == before
    export_checkpoint(run_dir / "last.pt", models, id="tvsrn-test", name="second", overwrite=True)
    assert json.loads((models / "tvsrn-test.json").read_text())["name"] == "second"


def test_export_of_a_checkpoint_without_a_clock_takes_minutes_from_the_log(run, tmp_path):
    run_dir, _ = run
    state = torch.load(run_dir / "last.pt", weights_only=True)
    original = {key: state[key] for key in ("model", "optimizer", "step", "best_psnr", "config")}
    torch.save(original, run_dir / "old.pt")
    with open(run_dir / "log.csv") as handle:
        last_seconds = float(handle.read().strip().splitlines()[-1].split(",")[4])
    card_path = export_checkpoint(run_dir / "old.pt", tmp_path, id="old", name="old", hardware="2-core CPU")
    training = json.loads(card_path.read_text())["training"]
    assert training["minutes"] == round(last_seconds / 60, 1) and training["hardware"] == "2-core CPU"


def test_export_command_and_its_errors(run, tmp_path, capsys):
    run_dir, _ = run
    code = main(["export", str(run_dir / "last.pt"), "--id", "cli-model", "--name", "CLI model",
                 "--out", str(tmp_path), "--hardware", "test machine"])  # fmt: skip
    assert code == 0 and "loaded back: OK" in capsys.readouterr().out
    assert load_model(tmp_path / "cli-model.safetensors")[1].training["hardware"] == "test machine"
    assert (
        main(["export", str(run_dir / "missing.pt"), "--id", "x", "--name", "x", "--out", str(tmp_path)]) == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="LABEL=PATH"):
        read_metrics(["summary.json"])


def test_the_core_command_line_runs_an_exported_model(run, tmp_path, capsys):
    run_dir, _ = run
    card_path = export_checkpoint(run_dir / "last.pt", tmp_path, id="cli-check", name="CLI check")
    volume = read_volume(phantom_ct())
    pair = make_pseudo_pair(volume.array.astype("float32"), volume.affine, 5)
    thick = write_volume(tmp_path / "thick.nii.gz", to_int16_hu(pair.thick), pair.thick_affine)
    assert core_main(["summary", "--model", str(card_path)]) == 0
    assert "cli-check: CLI check (trained, x5" in capsys.readouterr().out
    # --spacing 3: the model's own grid (15 mm / 5) instead of the default 1 mm
    assert core_main(["predict", str(thick), str(tmp_path / "thin.nii.gz"), "--model", str(card_path),
                      "--device", "cpu", "--spacing", "3"]) == 0  # fmt: skip
    thin = read_volume(tmp_path / "thin.nii.gz")
    assert thin.array.shape == (26, 101, 122)
    assert np.allclose(thin.affine, pair.truth_affine)


def test_export_refuses_metrics_of_other_weights(run, tmp_path):
    run_dir, _ = run
    models = tmp_path / "Models"
    models.mkdir()
    other = read_metrics([f"test={summary_file(tmp_path, 'f' * 64)}"])
    with pytest.raises(ValueError, match="test metrics were computed for other weights"):
        export_checkpoint(run_dir / "last.pt", models, id="tvsrn-test", name="x", metrics=other)
    assert list(models.iterdir()) == []


def test_metrics_from_evaluate_carry_the_weights_digest(run, tmp_path):
    run_dir, digest = run
    model = load_for_evaluation(run_dir / "last.pt")
    assert model.info["weights_digest"] == digest and model.info["step"] == 3


def test_a_continued_run_is_exported_with_every_phase(run, tmp_path):
    run_dir, _ = run
    cfg = TrainConfig(
        run_dir=str(tmp_path / "second"), model=TINY, train_volumes=[str(phantom_ct())], crop=[4, 16, 16],
        steps=2, lr=1e-4, log_every=1, device="cpu", threads=1, progress=False, tensorboard=False,
        plot=False, init_from=str(run_dir / "last.pt"),
    )  # fmt: skip
    second = Trainer(cfg)
    assert second.start_from(cfg.init_from) == 3
    second.run()
    card = load_model(export_checkpoint(tmp_path / "second" / "last.pt", tmp_path, id="two", name="two"))[1]
    phases = card.training["phases"]
    assert [phase["steps"] for phase in phases] == [3, 2] and card.training["steps"] == 5
    assert phases[0]["checkpoint"] == str(run_dir / "last.pt") and phases[0]["schedule"]["lr"] == 1e-3
    assert phases[1]["schedule"]["lr"] == 1e-4 and phases[1]["hardware"] == ["cpu (1 threads)"]
    assert card.training["minutes"] == pytest.approx(phases[0]["minutes"] + phases[1]["minutes"], abs=0.11)
    assert "5 steps" in card.description and "in 2 phases" in card.description
    assert "only where names and shapes matched" not in card.description


def test_a_partial_start_is_said_in_the_card(run, tmp_path):
    run_dir, _ = run
    x3 = {**TINY, "ratio": 3, "depth": 6}  # the same 16 thin slices as the x5 run: its decoder fits
    cfg = TrainConfig(
        run_dir=str(tmp_path / "x3"), model=x3, train_volumes=[str(phantom_ct())], crop=[6, 16, 16],
        steps=2, log_every=1, device="cpu", threads=1, progress=False, tensorboard=False, plot=False,
        init_from=str(run_dir / "last.pt"), init_partial=True,
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.start_from(cfg.init_from)
    trainer.run()
    card = load_model(export_checkpoint(tmp_path / "x3" / "last.pt", tmp_path, id="x3", name="x3"))[1]
    first = card.training["phases"][0]
    assert first["partial"]["fresh"] and first["partial"]["parameters_taken"] > 0
    assert "only where names and shapes matched" in card.description and card.ratio == 3

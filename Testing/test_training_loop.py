"""The training loop on real CT: the loss falls, resume is exact, logs, curves and checkpoints."""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (
    REPO,
    logged_steps,
    phantom_ct,
    start_training_cli,
    training_ct,
    wait_for_logged_steps,
)
from volumetricsr_training.cli import main as cli_main
from volumetricsr_training.config import TrainConfig, load_config
from volumetricsr_training.trainer import Trainer, TrainingStopped, learning_rate, state_digest
from VolumetricSRLib.models.tvsrn import TVSRN, TVSRNConfig

TINY = TVSRNConfig.tiny().to_dict()
TINY_RESIDUAL = {**TINY, "output": "residual"}  # residual, as in TrainConfig's default model settings


def tiny_config(run_dir: Path, ct: str = "phantom", **overrides) -> TrainConfig:
    settings = {
        "run_dir": str(run_dir), "model": {**TINY, "output": "direct"},
        "train_volumes": [str(training_ct(ct))],
        "crop": [4, 16, 16], "batch": 2, "steps": 8, "lr": 3e-3, "warmup": 2, "log_every": 1,
        "device": "cpu", "threads": 1, "progress": False, "snapshot_every": 0,
    }  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def losses(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "log.csv", newline="") as handle:
        return [(row["step"], row["loss"]) for row in csv.DictReader(handle) if row["loss"]]


@pytest.mark.parametrize("ct", ["phantom", "real"])
def test_a_few_steps_lower_the_loss_on_a_ct_crop(tmp_path, ct):
    trainer = Trainer(tiny_config(tmp_path, ct, steps=40, tensorboard=False, plot=False))
    trainer.run()
    values = [float(loss) for _, loss in losses(tmp_path)]
    assert len(values) == 40
    assert np.mean(values[-5:]) < 0.5 * np.mean(values[:5])


@pytest.mark.parametrize("log_every", [1, 3])
def test_resume_continues_exactly(tmp_path, log_every):
    whole = Trainer(tiny_config(tmp_path / "whole", log_every=log_every))
    whole.run()
    first = Trainer(tiny_config(tmp_path / "split", log_every=log_every))
    first.run(max_steps=4)  # with log_every 3, step 4 is not logged yet: the checkpoint carries it
    assert first.step == 4
    second = Trainer(tiny_config(tmp_path / "split", log_every=log_every))
    assert second.resume() and second.step == 4
    second.run()
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert [int(step) for step, _ in losses(tmp_path / "whole")] == (
        list(range(1, 9)) if log_every == 1 else [3, 6, 8]
    )
    assert state_digest(second.model) == state_digest(whole.model)


def test_an_adversarial_run_resumes_exactly_and_differs_from_an_l1_run(tmp_path):
    whole = Trainer(tiny_config(tmp_path / "whole", adversarial_weight=0.05))
    whole.run()
    first = Trainer(tiny_config(tmp_path / "split", adversarial_weight=0.05))
    first.run(max_steps=5)
    second = Trainer(tiny_config(tmp_path / "split", adversarial_weight=0.05))
    assert second.resume() and second.step == 5
    second.run()
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert state_digest(second.model) == state_digest(whole.model)
    assert state_digest(second.discriminator) == state_digest(whole.discriminator)  # saved and restored
    plain = Trainer(tiny_config(tmp_path / "plain"))
    plain.run()
    assert plain.discriminator is None and state_digest(plain.model) != state_digest(whole.model)
    with pytest.raises(ValueError, match=r"adversarial_weight: 0.05 -> 0.0"):  # no silent switch on resume
        Trainer(tiny_config(tmp_path / "split")).resume()
    with pytest.raises(ValueError, match=r"adversarial_weight must be 0 \(off\) or positive"):
        tiny_config(tmp_path / "bad", adversarial_weight=-1.0)


class SignalAtStep:
    """The run's own sampler, which sends this process `number` while fetching the batch of `step`."""

    def __init__(self, sampler, step: int, number: int) -> None:
        self.sampler, self.step, self.number = sampler, step, number

    def batch(self, seed: int, rank: int, step: int, size: int):
        if step == self.step:
            signal.raise_signal(self.number)
        return self.sampler.batch(seed, rank, step, size)


@pytest.fixture
def heeded(request: pytest.FixtureRequest):
    """The signal of the test with its default handler for the test's length: a suite started in the
    background of a non-interactive shell inherits SIGINT ignored, and the trainer leaves ignored
    signals ignored (as under nohup)."""
    number = request.node.callspec.params["number"]
    default = signal.default_int_handler if number == signal.SIGINT else signal.SIG_DFL
    inherited = signal.signal(number, default)
    yield number
    signal.signal(number, inherited)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_step_writes_last_and_resumes_exactly(tmp_path, number, heeded):
    whole = Trainer(tiny_config(tmp_path / "whole", log_every=3))
    whole.run()
    before = signal.getsignal(number)
    first = Trainer(tiny_config(tmp_path / "split", log_every=3))
    first.sampler = SignalAtStep(first.build_sampler(), step=4, number=number)
    first.run()
    assert first.stop_signal == number and first.step == 5
    with pytest.raises(
        TrainingStopped, match=rf"{signal.Signals(number).name} received: .*last.pt holds step 5"
    ):
        first.raise_if_stopped()
    assert signal.getsignal(number) is before  # the handler is put back after the run
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["step"] == 5
    second = Trainer(tiny_config(tmp_path / "split", log_every=3))
    assert second.resume() and second.step == 5 and second.stop_signal is None
    second.run()
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert state_digest(second.model) == state_digest(whole.model)


def test_a_stop_signal_during_the_last_step_leaves_a_finished_run(tmp_path):
    trainer = Trainer(tiny_config(tmp_path))
    trainer.sampler = SignalAtStep(trainer.build_sampler(), step=7, number=signal.SIGTERM)
    trainer.run()
    assert trainer.stop_signal == signal.SIGTERM and trainer.step == trainer.cfg.steps == 8
    trainer.raise_if_stopped()  # finished: nothing to resume, so no TrainingStopped
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 8


def train_argv(run_dir: Path, *extra: str) -> list[str]:
    """`volumetricsr-train train` arguments for a tiny residual TVSRN on the phantom in `run_dir`."""
    argv = ["train", *extra, "--set", f"run_dir={run_dir}"]
    settings = {"train_volumes": [str(phantom_ct())], "crop": [4, 16, 16], "device": "cpu", "threads": 1,
                "progress": False, **{f"model.{k}": v for k, v in TINY_RESIDUAL.items()}}  # fmt: skip
    for key, value in settings.items():
        argv += ["--set", f"{key}={value!r}"]
    return argv


def test_sigterm_to_the_train_command_saves_and_says_how_to_resume_but_nohup_sighup_is_ignored(tmp_path):
    argv = train_argv(tmp_path, "--set", "steps=100000", "--set", "log_every=1")
    # SIGHUP ignored, as under nohup
    process = start_training_cli(argv, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        wait_for_logged_steps(process, tmp_path, 2)
        process.send_signal(signal.SIGHUP)
        wait_for_logged_steps(process, tmp_path, logged_steps(tmp_path) + 3)  # still training
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["step"]
    assert saved == logged_steps(tmp_path) >= 5
    assert f"stopped at step {saved} of 100000" in out
    assert (
        f"volumetricsr-train train: SIGTERM received: {tmp_path / 'last.pt'} holds step {saved}; "
        "run the same command to resume exactly"
    ) in err


def test_a_second_process_is_refused_a_run_folder_in_use_and_a_killed_holder_frees_it(tmp_path, capsys):
    argv = train_argv(tmp_path, "--set", "steps=100000", "--set", "log_every=1")
    holder = start_training_cli(argv)
    try:
        wait_for_logged_steps(holder, tmp_path, 2)
        assert cli_main([*argv, "--max-steps", "1"]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path} is being trained by pid {holder.pid} on " in err
        assert "stop it (SIGTERM saves last.pt), then run the same command again" in err
        wait_for_logged_steps(holder, tmp_path, logged_steps(tmp_path) + 2)  # the holder trains on
    finally:
        holder.kill()  # SIGKILL: no clean-up; the operating system releases the lock
        holder.wait()
    assert cli_main([*argv, "--max-steps", "1"]) == 0
    assert "stopped at step" in capsys.readouterr().out


def test_resume_refuses_other_learning_settings_but_takes_new_bookkeeping(tmp_path):
    Trainer(tiny_config(tmp_path)).run(max_steps=2)
    changed = Trainer(tiny_config(tmp_path, lr=1e-4, steps=20))
    with pytest.raises(ValueError, match=r"lr: 0.003 -> 0.0001; steps: 8 -> 20.*init_from"):
        changed.resume()
    reporting = Trainer(tiny_config(tmp_path, log_every=4, snapshot_every=2, tensorboard=False))
    assert reporting.resume() and reporting.step == 2
    moved = tmp_path.parent / f"{tmp_path.name}-moved"  # a run folder moved elsewhere resumes too
    shutil.copytree(tmp_path, moved)
    assert Trainer(tiny_config(moved)).resume()


def test_a_new_run_starts_from_another_runs_weights(tmp_path):
    first = Trainer(tiny_config(tmp_path / "first"))
    first.run(max_steps=3)
    cfg = tiny_config(tmp_path / "second", lr=1e-4, init_from=str(tmp_path / "first" / "last.pt"))
    second = Trainer(cfg)
    assert not second.resume() and second.start_from(cfg.init_from) == 3
    assert second.step == 0 and state_digest(second.model) == state_digest(first.model)
    assert second.lineage[0]["steps"] == 3 and second.lineage[0]["schedule"]["lr"] == 3e-3
    other = Trainer(tiny_config(tmp_path / "third", model=TINY_RESIDUAL))
    with pytest.raises(ValueError, match="trained with model config"):
        other.start_from(cfg.init_from)
    with pytest.raises(FileNotFoundError, match="init_from checkpoint not found"):
        other.start_from(tmp_path / "missing.pt")


def test_a_network_of_another_ratio_and_depth_takes_the_matching_weights_only(tmp_path):
    first = Trainer(tiny_config(tmp_path / "first"))  # x5 from 4 thick slices: 16 thin slices
    first.run(max_steps=3)
    x3 = {**TINY, "output": "direct", "ratio": 3, "depth": 6}  # also 16 thin slices, a wider encoder
    source = str(tmp_path / "first" / "last.pt")
    cfg = tiny_config(tmp_path / "x3", model=x3, crop=[6, 16, 16], init_from=source, init_partial=True)
    second = Trainer(cfg)
    assert second.start_from(cfg.init_from) == 3
    theirs, ours = first.model.state_dict(), second.model.state_dict()
    partial = second.lineage[-1]["partial"]
    fresh = set(partial["fresh"])
    assert fresh and all(ours[name].shape != theirs[name].shape for name in fresh)  # the encoder's
    taken = set(ours) - fresh
    assert any(name.startswith("fims.") for name in taken)  # the decoder, whose width is the thin depth's
    assert all(torch.equal(ours[name], theirs[name]) for name in taken)
    total = sum(value.numel() for value in second.model.parameters())
    assert partial["parameters_taken"] + partial["parameters_fresh"] == total
    assert 0 < partial["parameters_fresh"] < total
    second.run(max_steps=2)  # and it trains
    assert second.step == 2

    whole = tiny_config(tmp_path / "x3-whole", model=x3, crop=[6, 16, 16], init_from=source)
    with pytest.raises(ValueError, match="trained with model config"):  # without init_partial: refused
        Trainer(whole).start_from(source)
    resvox = tiny_config(tmp_path / "resvox", model={"arch": "resvox", "channels": 4, "blocks": 1},
                         init_from=source, init_partial=True)  # fmt: skip
    with pytest.raises(ValueError, match="is a tvsrn network; init_partial needs a resvox one"):
        Trainer(resvox).start_from(source)


def test_the_command_says_which_parts_of_a_partial_start_are_fresh(tmp_path, capsys):
    from volumetricsr_training.cli import main

    Trainer(tiny_config(tmp_path / "first")).run(max_steps=2)
    x3_model = {**TINY, "output": "direct", "ratio": 3, "depth": 6}
    x3 = tiny_config(tmp_path / "x3", model=x3_model, crop=[6, 16, 16])
    settings = {**x3.to_dict(), "init_from": str(tmp_path / "first" / "last.pt"), "init_partial": True}
    settings.update(tensorboard=False, plot=False)
    model = ", ".join(f"{key} = {json.dumps(value)}" for key, value in settings.pop("model").items())
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    (tmp_path / "x3.toml").write_text("\n".join([*lines, f"model = {{ {model} }}"]) + "\n")
    assert main(["train", "--config", str(tmp_path / "x3.toml"), "--max-steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert "parameters of matching name and shape;" in printed and "start fresh, in: encoder\n" in printed


def test_a_checkpoint_with_only_the_original_keys_still_resumes(tmp_path):
    Trainer(tiny_config(tmp_path)).run(max_steps=4)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    original = {key: state[key] for key in ("model", "optimizer", "step", "best_psnr", "config")}
    torch.save(original, tmp_path / "last.pt")
    resumed = Trainer(tiny_config(tmp_path))
    assert resumed.resume() and resumed.step == 4
    assert resumed.train_seconds > 0  # recovered from log.csv
    resumed.run()
    assert resumed.step == 8


def test_resume_refuses_a_different_model(tmp_path):
    Trainer(tiny_config(tmp_path)).run(max_steps=1)
    other = Trainer(tiny_config(tmp_path, model=TINY_RESIDUAL))
    with pytest.raises(ValueError, match="trained with model config"):
        other.resume()


def test_validation_keeps_the_best_checkpoint_and_writes_curves(tmp_path):
    val = str(phantom_ct())
    trainer = Trainer(tiny_config(tmp_path, steps=6, val_every=3, val_volumes=[val], snapshot_every=3))
    trainer.run()
    with open(tmp_path / "log.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["val_psnr"]]
    assert [row["step"] for row in rows] == ["3", "6"]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["best_psnr"] == pytest.approx(max(float(row["val_psnr"]) for row in rows))
    assert (tmp_path / "step_000003.pt").exists() and (tmp_path / "step_000006.pt").exists()
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and max(p.stat().st_size for p in events) > 100
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["step"] == 6 and json.loads(last["config"])["val_every"] == 3
    assert last["train_seconds"] > 0 and last["hardware"] == ["cpu (1 threads)"]


def test_missing_tensorboard_is_a_message_not_a_crash(tmp_path):
    argv = train_argv(tmp_path, "--max-steps", "2")
    code = (
        "import sys; sys.modules['torch.utils.tensorboard'] = None  # as if tensorboard were not installed\n"
        f"from volumetricsr_training.cli import main; sys.exit(main({argv!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tensorboard package is not installed" in done.stderr
    assert "stopped at step 2" in done.stdout
    assert not (tmp_path / "tensorboard").exists() and (tmp_path / "last.pt").exists()


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = TrainConfig(lr=1e-3, warmup=10, steps=110)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(5e-4)
    assert learning_rate(cfg, 110) == pytest.approx(0.0)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="crop depth 3 must equal the network's input depth 4"):
        TrainConfig(crop=[3, 64, 64])
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(train_volumes=["a.nii.gz"], rplhr_root="data")
    with pytest.raises(ValueError, match="unknown training config keys: \\['stepz'\\]"):
        load_config(None, ["stepz=3"])
    shipped = load_config(REPO / "training" / "configs" / "shared_ct_tvsrn.toml", ["steps=10"])
    assert shipped.steps == 10 and shipped.model == {"output": "residual"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train_volumes=ct.nii.gz", "train_volumes must be a list, got 'ct.nii.gz'"),
        ("lr=abc", "lr must be a number, got 'abc'"),
        ("steps=1.5", "steps must be a whole number, got 1.5"),
        ("steps=true", "steps must be a whole number, got True"),
        ("flip=1", "flip must be true or false, got 1"),
        ("device=3", "device must be text, got 3"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(override, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load_config(None, [override])
    assert "Python syntax" in str(error.value)


def test_settings_are_normalised_to_their_field_types():
    cfg = load_config(None, ["lr=1", "crop=(4, 32, 32)", 'train_volumes=["a.nii.gz"]'])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.crop == [4, 32, 32] and cfg.train_volumes == ["a.nii.gz"]


def test_the_shipped_second_phase_continues_the_first_on_the_same_data():
    configs = REPO / "training" / "configs"
    first = load_config(configs / "shared_ct_tvsrn.toml").to_dict()
    second = load_config(configs / "shared_ct_tvsrn_phase2.toml").to_dict()
    assert second["init_from"] == f"{first['run_dir']}/step_{first['steps']:06d}.pt"
    changed = {key for key in first if first[key] != second[key]}
    assert changed == {"run_dir", "init_from", "steps", "lr", "seed"}


def test_training_works_after_inference_on_the_same_shape():
    """Validation runs the predictor under inference_mode; the network's cached masks must stay usable."""
    model = TVSRN(TVSRNConfig(**TINY))
    shape = (1, 4, 12, 28)  # a shape no other test uses, so the caches are first filled here
    with torch.inference_mode():
        model(torch.rand(shape))
    loss = model(torch.rand(shape)).mean()
    loss.backward()
    assert model.embed.weight.grad is not None


def test_slab_augmentation_and_inplane_pairs_train_and_resume_exactly(tmp_path):
    options = {"slab_mix": ["box", "gaussian", "trapezoid"], "slab_width": [0.8, 1.2], "inplane_pairs": 0.5}
    whole = Trainer(tiny_config(tmp_path / "whole", log_every=3, **options))
    whole.run()
    first = Trainer(tiny_config(tmp_path / "split", log_every=3, steps=8, **options))
    first.sampler = SignalAtStep(first.build_sampler(), step=4, number=signal.SIGTERM)
    first.run()
    second = Trainer(tiny_config(tmp_path / "split", log_every=3, **options))
    assert second.resume() and second.step == 5
    second.run()
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert state_digest(second.model) == state_digest(whole.model)
    changed = Trainer(tiny_config(tmp_path / "split", **{**options, "inplane_pairs": 0.25}))
    with pytest.raises(ValueError, match=r"inplane_pairs: 0\.5 -> 0\.25"):
        changed.resume()

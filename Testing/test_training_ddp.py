"""DDP through torchrun: two CPU processes on gloo train together and end with identical weights."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import torch

from conftest import REPO, phantom_ct
from volumetricsr_training.config import TrainConfig
from volumetricsr_training.trainer import state_digest
from VolumetricSRLib.models.tvsrn import TVSRN, TVSRNConfig

TINY = TVSRNConfig.tiny(output="residual").to_dict()  # residual, as in TrainConfig's default model settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_processes_train_in_step(tmp_path):
    ct = str(phantom_ct())
    settings = {
        "run_dir": str(tmp_path), "train_volumes": [ct], "val_volumes": [ct], "crop": [4, 16, 16], "steps": 4,
        "val_every": 2, "log_every": 1, "device": "cpu", "threads": 1, "progress": False,
        "write_digests": True, "tensorboard": False, **{f"model.{k}": v for k, v in TINY.items()},
    }  # fmt: skip
    overrides = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value!r}")]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "volumetricsr_training.cli", "train", *overrides]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stopped at step 4 of 4" in done.stdout

    digests = [(tmp_path / f"replica_digest_rank{rank}.txt").read_text().strip() for rank in (0, 1)]
    assert len(digests[0]) == 64 and digests[0] == digests[1]
    # the checkpoint rank 0 wrote holds the same weights, trained for 4 steps by 2 x 1 processes
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    model = TVSRN(TrainConfig(model=TINY).network)
    model.load_state_dict(state["model"])
    assert state_digest(model) == digests[0] and state["step"] == 4
    assert state["hardware"] == ["2 x cpu (1 threads)"]
    with open(tmp_path / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows if row["val_psnr"]] == ["2", "4"]

"""Shared test set-up: import paths, the real-CT folder beside the checkout, a synthetic chest CT file
that travels with the repository, CPU threads, a tiny TVSRN and a wrapper that holds a network's
first batch at a gate."""

from __future__ import annotations

import atexit
import csv
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

sys.path.insert(0, str(REPO / "VolumetricSR"))
sys.path.insert(0, str(REPO))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # CI also runs the suite on 1

from VolumetricSRLib.models.tvsrn import TVSRN, TVSRNConfig  # noqa: E402  (after the path set-up above)

PHANTOM_CT_SHAPE = (30, 101, 122)  # slices, rows, columns: the size of the small real training fixture
REAL_TRAINING_CT = "TotalSegmentator/example_ct_sm.nii.gz"  # a training fixture; never a held-out scan


@functools.cache
def phantom_ct() -> Path:
    """A synthetic chest CT (NIfTI, 3 mm slices of 1.5 mm pixels), written once per test session:
    the input of the training, export and predict tests on a fresh clone without ../shared."""
    from VolumetricSRLib.io.volume_io import write_volume
    from VolumetricSRLib.phantom import chest_phantom

    folder = Path(tempfile.mkdtemp(prefix="volumetricsr-phantom-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    hu, affine = chest_phantom(PHANTOM_CT_SHAPE, slice_mm=3.0, pixel_mm=1.5)
    path = folder / "phantom_chest_3mm.nii.gz"
    write_volume(path, hu, affine)
    return path


def training_ct(kind: str) -> Path:
    """'phantom': phantom_ct(); 'real': the small real CT of ../shared/data (skips when absent)."""
    return phantom_ct() if kind == "phantom" else shared_ct(REAL_TRAINING_CT)


def shared_ct(relative: str) -> Path:
    """Path of a real CT under ../shared/data/ct, or skip the test with the reason."""
    path = SHARED_DATA / "ct" / relative
    if not path.exists():
        pytest.skip(f"real CT {relative} not found: ../shared/data is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def linear_model_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Card of an untrained tiny TVSRN with the residual output: its head starts at zero, so it
    predicts linear interpolation exactly, and a child process running it gives known voxels."""
    from VolumetricSRLib.models.weights import save_model

    network = tiny_tvsrn(ratio=5, output="residual")
    folder = tmp_path_factory.mktemp("linear-model")
    return save_model(network, folder, id="linear-stand-in", name="Linear stand-in", trained=False)


def assert_float32_close(
    candidate: torch.Tensor, reference: torch.Tensor, exact: torch.Tensor, factor: float = 4.0
) -> None:
    """`candidate` and `reference` compute one function in float32 with their sums in other orders
    (other chunks, kernels or vector widths); `exact` is that function in float64. The candidate may be
    at most `factor` times as far from `exact` as the reference is, plus one float32 ulp of the
    largest value: the tolerance is the rounding this CPU's float32 kernels make on these sizes, so it
    holds on any CPU and thread count, while a real mistake (a wrong mask or chunk) is many times
    larger than rounding."""
    exact = exact.double()
    rounding = (reference.double() - exact).abs().max().item()
    ulp = torch.finfo(torch.float32).eps * exact.abs().max().item()
    error = (candidate.double() - exact).abs().max().item()
    assert error <= factor * rounding + ulp, (
        f"float32 error {error:.3g} against float64 exceeds {factor} x the reference path's {rounding:.3g}"
    )


def tiny_tvsrn(**overrides) -> TVSRN:
    """A TVSRN of TVSRNConfig.tiny(**overrides), its weights drawn after torch.manual_seed(0)."""
    torch.manual_seed(0)
    return TVSRN(TVSRNConfig.tiny(**overrides))


class GatedModel(nn.Module):
    """Wraps `network`; its first batch waits (at most 60 s) until `gate` is set. Counts the calls."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network, self.cfg, self.gate, self.calls = network, network.cfg, threading.Event(), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            assert self.gate.wait(timeout=60), "the test never opened the gate"
        return self.network(x)


def start_training_cli(argv: list[str], **popen) -> subprocess.Popen:
    """`volumetricsr-train ARGV` in a child Python from the repository root, its output captured."""
    code = f"from volumetricsr_training.cli import main; import sys; sys.exit(main({argv!r}))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)  # fmt: skip


def logged_steps(run_dir: Path) -> int:
    """Rows with a training loss in the run's log.csv (0 before it exists)."""
    if not (run_dir / "log.csv").exists():
        return 0
    with open(run_dir / "log.csv", newline="") as handle:
        return sum(1 for row in csv.DictReader(handle) if row["loss"])


def wait_for_logged_steps(process: subprocess.Popen, run_dir: Path, count: int) -> None:
    """Until `process` has logged `count` steps in `run_dir` (fail if it ends or after 120 s)."""
    deadline = time.monotonic() + 120
    while logged_steps(run_dir) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"training logged fewer than {count} steps within 120 s"
        time.sleep(0.2)

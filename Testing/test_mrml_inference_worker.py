"""The inference worker: thread, progress, cancel, GPU out-of-memory retries and the CPU fallback.

A real (tiny) TVSRN does the work. The GPU is stood in for where this machine has none: a model
wrapper that raises torch.cuda.OutOfMemoryError on inputs a small GPU could not hold, and a
predictor wrapper that runs out of memory on every device but the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import GatedModel, tiny_tvsrn
from VolumetricSRLib.predictor import InputError, PredictionCancelled, PredictOptions, super_resolve_hu
from VolumetricSRMRML.inference_worker import InferenceWorker, describe_change, next_attempt

WINDOW = (-1024.0, 2048.0)
AFFINE = np.diag([0.8, 0.8, 5.0, 1.0])


def ct(slices: int = 7, rows: int = 16, cols: int = 16) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(-1000, 1500, size=(slices, rows, cols)).astype(np.int16)


class SmallGpu(nn.Module):
    """The tiny network on a pretend GPU that holds at most `max_batch` pieces of `max_pixels` each."""

    def __init__(self, network: nn.Module, max_batch: int, max_pixels: int) -> None:
        super().__init__()
        self.network, self.cfg = network, network.cfg
        self.max_batch, self.max_pixels = max_batch, max_pixels
        self.refused: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_batch or x.shape[2] * x.shape[3] > self.max_pixels:
            self.refused.append(tuple(x.shape))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(x)


def expected(model: nn.Module, hu: np.ndarray, options: PredictOptions) -> np.ndarray:
    return super_resolve_hu(model, hu, AFFINE, options, window=WINDOW)[0]


def run(worker: InferenceWorker, **kwargs):
    events = []
    outcome = worker.run_until_done(on_progress=lambda f, m: events.append((f, m)), **kwargs)
    return outcome, events


def test_worker_returns_what_the_predictor_returns_and_reports_progress():
    hu, network = ct(), tiny_tvsrn()
    options = PredictOptions(device="cpu", batch=2)
    worker = InferenceWorker(network, hu, AFFINE, options, window=WINDOW)
    outcome, events = run(worker)

    np.testing.assert_array_equal(outcome.thin_hu, expected(network, hu, options))
    np.testing.assert_allclose(outcome.thin_affine, np.diag([0.8, 0.8, 1.0, 1.0]))
    assert outcome.options == options
    assert outcome.device.startswith("cpu (")
    assert outcome.fallbacks == ()
    assert outcome.seconds > 0
    fractions = [fraction for fraction, _ in events]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert not worker.is_running()


def test_worker_thread_is_not_the_calling_thread():
    seen = []

    def predict(*args, **kwargs):
        seen.append(threading.current_thread())
        return super_resolve_hu(*args, **kwargs)

    worker = InferenceWorker(
        tiny_tvsrn(), ct(5), AFFINE, PredictOptions(device="cpu"), window=WINDOW, predict=predict
    )
    run(worker)
    assert seen and seen[0] is not threading.current_thread()
    assert seen[0].name == "VolumetricSR inference" and seen[0].daemon


def test_cancel_stops_before_the_next_batch():
    model = GatedModel(tiny_tvsrn())
    worker = InferenceWorker(model, ct(13), AFFINE, PredictOptions(device="cpu"), window=WINDOW)
    with pytest.raises(PredictionCancelled):
        run(
            worker,
            should_cancel=lambda: model.calls > 0,
            idle=lambda: model.gate.set() if worker.cancel_requested else None,
        )
    assert model.calls == 1  # the first of four windows ran, the second never started
    assert worker.cancel_requested


def test_outcome_before_start_and_while_running_is_an_error():
    model = GatedModel(tiny_tvsrn())
    worker = InferenceWorker(model, ct(5), AFFINE, PredictOptions(device="cpu"), window=WINDOW)
    with pytest.raises(RuntimeError, match="never started"):
        worker.outcome()
    worker.start()
    try:
        with pytest.raises(RuntimeError, match="still running"):
            worker.outcome()
    finally:
        model.gate.set()
        assert worker.wait(60)
    assert worker.outcome().thin_hu.shape == (21, 16, 16)


def test_predictor_errors_reach_the_calling_thread():
    worker = InferenceWorker(tiny_tvsrn(), ct(3), AFFINE, PredictOptions(device="cpu"), window=WINDOW)
    with pytest.raises(InputError, match="at least 4 slices"):
        run(worker)


def test_out_of_memory_halves_the_batch_until_it_fits():
    hu, network = ct(13), tiny_tvsrn()
    model = SmallGpu(network, max_batch=1, max_pixels=16 * 16)
    worker = InferenceWorker(model, hu, AFFINE, PredictOptions(device="cpu", batch=4), window=WINDOW)
    outcome, events = run(worker)

    assert outcome.options.batch == 1
    assert outcome.fallbacks == (
        "GPU out of memory: retrying with batch 2",
        "GPU out of memory: retrying with batch 1",
    )
    assert [shape[0] for shape in model.refused] == [4, 2]
    assert [message for _, message in events if "out of memory" in message] == list(outcome.fallbacks)
    np.testing.assert_array_equal(
        outcome.thin_hu, expected(network, hu, PredictOptions(device="cpu", batch=1))
    )


def test_out_of_memory_then_tiles_the_slices():
    hu, network = ct(5, 80, 80), tiny_tvsrn()
    model = SmallGpu(network, max_batch=1, max_pixels=64 * 64)
    worker = InferenceWorker(model, hu, AFFINE, PredictOptions(device="cpu", batch=2), window=WINDOW)
    outcome, _ = run(worker)

    assert (outcome.options.batch, outcome.options.tile) == (1, 64)
    assert outcome.fallbacks == (
        "GPU out of memory: retrying with batch 1",
        "GPU out of memory: retrying with 64 x 64 tiles",
    )
    assert [shape[2:] for shape in model.refused] == [(80, 80), (80, 80)]
    tiled = PredictOptions(device="cpu", batch=1, tile=64)
    np.testing.assert_array_equal(outcome.thin_hu, expected(network, hu, tiled))


def test_out_of_memory_on_the_gpu_falls_back_to_the_cpu():
    """The predictor on a pretend GPU runs out of memory whatever the batch and tile; the CPU works."""
    hu, network = ct(5, 70, 70), tiny_tvsrn()
    attempts = []

    def predict_on_small_gpu(model, volume, affine, options, **kwargs):
        attempts.append(options)
        if options.device != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB")
        return super_resolve_hu(model, volume, affine, options, **kwargs)

    requested = PredictOptions(device="cuda", batch=2, amp=True)
    worker = InferenceWorker(network, hu, AFFINE, requested, window=WINDOW, predict=predict_on_small_gpu)
    outcome, _ = run(worker)

    assert [(a.device, a.batch, a.tile, a.amp) for a in attempts] == [
        ("cuda", 2, None, True),
        ("cuda", 1, None, True),
        ("cuda", 1, 64, True),
        ("cpu", 2, None, False),
    ]
    assert outcome.fallbacks[-1] == "GPU out of memory: running on the CPU instead (slower)"
    assert outcome.device.startswith("cpu")
    np.testing.assert_array_equal(
        outcome.thin_hu, expected(network, hu, replace(requested, device="cpu", amp=False))
    )


def test_out_of_memory_everywhere_ends_with_a_clear_error():
    model = SmallGpu(tiny_tvsrn(), max_batch=0, max_pixels=0)
    worker = InferenceWorker(model, ct(5, 70, 70), AFFINE, PredictOptions(device="cpu"), window=WINDOW)
    with pytest.raises(MemoryError, match="batch 1, the smallest tiles and the CPU") as error:
        run(worker)
    assert isinstance(error.value.__cause__, torch.cuda.OutOfMemoryError)
    assert [shape[2:] for shape in model.refused] == [(70, 70), (64, 64)]


@pytest.mark.parametrize(
    ("current", "shape", "after"),
    [
        (PredictOptions(device="cuda", batch=8), (512, 512), PredictOptions(device="cuda", batch=4)),
        (PredictOptions(device="cuda", batch=3), (512, 512), PredictOptions(device="cuda", batch=1)),
        (PredictOptions(device="cuda"), (512, 512), PredictOptions(device="cuda", tile=256)),
        (PredictOptions(device="cuda"), (300, 200), PredictOptions(device="cuda", tile=256)),
        (PredictOptions(device="cuda", tile=200), (512, 512), PredictOptions(device="cuda", tile=128)),
        (PredictOptions(device="auto", tile=128), (512, 512), PredictOptions(device="auto", tile=64)),
        (PredictOptions(device="cuda", tile=64), (512, 512), "cpu"),
        (PredictOptions(device="cuda", tile=128, tile_overlap=64), (512, 512), "cpu"),
        (PredictOptions(device="auto"), (64, 64), "cpu"),
        (PredictOptions(device="cpu", tile=64), (512, 512), None),
    ],
)
def test_retry_ladder(current, shape, after):
    requested = PredictOptions(device=current.device, batch=6, tile=None, amp=True)
    if after == "cpu":
        after = PredictOptions(device="cpu", batch=6, tile=None, amp=False)
    assert next_attempt(current, requested, shape) == after


def test_describe_change():
    base = PredictOptions(device="cuda", batch=2)
    assert describe_change(base, replace(base, batch=1)) == "GPU out of memory: retrying with batch 1"
    assert (
        describe_change(base, replace(base, tile=128)) == "GPU out of memory: retrying with 128 x 128 tiles"
    )
    assert (
        describe_change(base, replace(base, device="cpu"))
        == "GPU out of memory: running on the CPU instead (slower)"
    )


def test_importing_the_worker_loads_neither_slicer_nor_torch():
    """Slicer imports the module with its widget: torch must wait for the first Apply."""
    module_dir = Path(sys.modules[InferenceWorker.__module__].__file__).parents[1]
    check = (
        "import sys, VolumetricSRMRML.inference_worker; "
        "print(sorted(m for m in ('torch', 'slicer', 'vtk', 'qt') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(module_dir)}
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"

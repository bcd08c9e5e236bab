"""GPU out-of-memory recovery in the core: smaller batch, then smaller tiles, then the CPU.

A real (tiny) TVSRN does the work. The GPU is stood in for where this machine has none: a model
wrapper that raises torch.cuda.OutOfMemoryError on inputs a small GPU could not hold, and a
predictor wrapper that runs out of memory on every device but the CPU.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_tvsrn
from VolumetricSRLib.inference.fallback import describe_change, next_attempt, super_resolve_with_fallback
from VolumetricSRLib.inference.predictor import PredictOptions, super_resolve_hu

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


def run(model, hu, options, **kwargs):
    notes: list[str] = []
    result = super_resolve_with_fallback(
        model, hu, AFFINE, options, on_fallback=notes.append, window=WINDOW, **kwargs
    )
    return (*result, notes)


def test_without_trouble_it_is_the_predictor():
    hu, network = ct(), tiny_tvsrn()
    options = PredictOptions(device="cpu", batch=None)
    thin, affine, used, fallbacks, notes = run(network, hu, options)
    assert used == replace(options, batch=1)  # the batch chosen on a CPU
    assert fallbacks == () and notes == []
    np.testing.assert_array_equal(thin, expected(network, hu, used))
    np.testing.assert_allclose(affine, np.diag([0.8, 0.8, 1.0, 1.0]))


def test_out_of_memory_halves_the_batch_until_it_fits():
    hu, network = ct(13), tiny_tvsrn()
    model = SmallGpu(network, max_batch=1, max_pixels=16 * 16)
    thin, _, used, fallbacks, notes = run(model, hu, PredictOptions(device="cpu", batch=4))
    assert used.batch == 1
    assert fallbacks == (
        "GPU out of memory: retrying with batch 2",
        "GPU out of memory: retrying with batch 1",
    )
    assert notes == list(fallbacks)
    assert [shape[0] for shape in model.refused] == [4, 2]
    np.testing.assert_array_equal(thin, expected(network, hu, PredictOptions(device="cpu", batch=1)))


def test_out_of_memory_then_tiles_the_slices():
    hu, network = ct(5, 80, 80), tiny_tvsrn()
    model = SmallGpu(network, max_batch=1, max_pixels=64 * 64)
    thin, _, used, fallbacks, _ = run(model, hu, PredictOptions(device="cpu", batch=2))
    assert (used.batch, used.tile) == (1, 64)
    assert fallbacks == (
        "GPU out of memory: retrying with batch 1",
        "GPU out of memory: retrying with 64 x 64 tiles",
    )
    assert [shape[2:] for shape in model.refused] == [(80, 80), (80, 80)]
    np.testing.assert_array_equal(thin, expected(network, hu, PredictOptions(device="cpu", batch=1, tile=64)))


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
    thin, _, used, fallbacks, _ = run(network, hu, requested, predict=predict_on_small_gpu)
    assert [(a.device, a.batch, a.tile, a.amp) for a in attempts] == [
        ("cuda", 2, None, True),
        ("cuda", 1, None, True),
        ("cuda", 1, 64, True),
        ("cpu", 1, None, False),
    ]
    assert fallbacks[-1] == "GPU out of memory: running on the CPU instead (slower)"
    assert used.device == "cpu"
    np.testing.assert_array_equal(thin, expected(network, hu, used))


def test_out_of_memory_everywhere_ends_with_a_clear_error():
    model = SmallGpu(tiny_tvsrn(), max_batch=0, max_pixels=0)
    with pytest.raises(MemoryError, match="batch 1, the smallest tiles and the CPU") as error:
        run(model, ct(5, 70, 70), PredictOptions(device="cpu"))
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
        after = PredictOptions(device="cpu", batch=1, tile=None, amp=False)
    assert next_attempt(current, requested, shape) == after


def test_describe_change():
    base = PredictOptions(device="cuda", batch=2)
    assert describe_change(base, replace(base, batch=1)) == "GPU out of memory: retrying with batch 1"
    assert (
        describe_change(base, replace(base, tile=128, batch=1))
        == "GPU out of memory: retrying with 128 x 128 tiles"
    )
    assert (
        describe_change(base, replace(base, device="cpu"))
        == "GPU out of memory: running on the CPU instead (slower)"
    )

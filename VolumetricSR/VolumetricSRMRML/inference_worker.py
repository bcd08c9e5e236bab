"""Inference on a worker thread that sees numpy arrays only (no slicer, qt or vtk here).

The thread runs the core predictor; the caller's (main) thread polls for progress, forwards
cancel requests and keeps its GUI alive. A CUDA out-of-memory error is retried with a smaller
batch, then with smaller in-plane tiles, then on the CPU; every retry is reported.
torch and the core predictor are imported when the work starts, never when this module loads.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

MIN_RETRY_TILE = 64
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: fraction done in [0, 1] and what is happening."""

    fraction: float
    message: str


@dataclass(frozen=True)
class InferenceOutcome:
    """A finished run: the thin volume, its affine and how it was obtained."""

    thin_hu: np.ndarray
    thin_affine: np.ndarray
    options: Any
    device: str
    seconds: float
    fallbacks: tuple[str, ...]


def next_attempt(
    current: Any, requested: Any, slice_shape: tuple[int, int], min_tile: int = MIN_RETRY_TILE
) -> Any:
    """The options to retry with after a GPU out-of-memory error, or None when nothing is left.

    Halve the batch down to 1; then use in-plane tiles, each the next power of two below the
    current tile (the whole slice at first), down to `min_tile` (at least twice the tile overlap);
    then run the `requested` options on the CPU without half precision.
    """
    if current.batch > 1:
        return replace(current, batch=current.batch // 2)
    tile = current.tile if current.tile is not None else max(slice_shape)
    smaller = 1 << ((int(tile) - 1).bit_length() - 1)
    if smaller >= max(min_tile, 2 * current.tile_overlap):
        return replace(current, tile=smaller)
    if str(current.device).lower() != "cpu":
        return replace(requested, device="cpu", amp=False)
    return None


def describe_change(before: Any, after: Any) -> str:
    """One line for people: what the retry changes."""
    if after.device != before.device:
        return "GPU out of memory: running on the CPU instead (slower)"
    if after.batch != before.batch:
        return f"GPU out of memory: retrying with batch {after.batch}"
    return f"GPU out of memory: retrying with {after.tile} x {after.tile} tiles"


class InferenceWorker:
    """Super-resolves one HU volume on a thread; start(), then poll or run_until_done()."""

    def __init__(
        self,
        model: Any,
        hu: np.ndarray,
        affine: np.ndarray,
        options: Any,
        *,
        window: tuple[float, float],
        trained_spacing_mm: float | None = None,
        predict: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self._model = model
        self._hu = hu
        self._affine = np.asarray(affine, dtype=np.float64)
        self._options = options
        self._window = window
        self._trained_spacing_mm = trained_spacing_mm
        self._predict = predict
        self._events: queue.Queue[ProgressEvent] = queue.Queue()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="VolumetricSR inference", daemon=True)
        self._outcome: InferenceOutcome | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Ask the predictor to stop before its next batch."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def is_running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to `timeout` seconds; true when the work has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def drain_progress(self) -> list[ProgressEvent]:
        """Progress events reported since the last call, oldest first."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def outcome(self) -> InferenceOutcome:
        """The result of a finished run; re-raises the worker's error (PredictionCancelled included)."""
        if self._thread.is_alive():
            raise RuntimeError("the inference is still running; wait for it first")
        if self._error is not None:
            raise self._error
        if self._outcome is None:
            raise RuntimeError("the inference was never started")
        return self._outcome

    def run_until_done(
        self,
        on_progress: Callable[[float, str], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        idle: Callable[[], None] | None = None,
    ) -> InferenceOutcome:
        """Start, then poll on the calling thread: forward progress, cancel requests and idle time."""
        self.start()
        while not self.wait(POLL_SECONDS):
            self._forward(on_progress)
            if should_cancel is not None and not self.cancel_requested and should_cancel():
                self.cancel()
            if idle is not None:
                idle()
        self._forward(on_progress)
        return self.outcome()

    def _forward(self, on_progress: Callable[[float, str], None] | None) -> None:
        for event in self.drain_progress():
            if on_progress is not None:
                on_progress(event.fraction, event.message)

    def _report(self, fraction: float, message: str) -> None:
        self._events.put(ProgressEvent(float(fraction), message))

    def _run(self) -> None:
        try:
            self._outcome = self._infer()
        except BaseException as error:  # handed to the caller's thread by outcome()
            self._error = error

    def _infer(self) -> InferenceOutcome:
        import torch

        from VolumetricSRLib.device import describe_device, resolve_device

        predict = self._predict
        if predict is None:
            from VolumetricSRLib.predictor import super_resolve_hu as predict
        started = time.perf_counter()
        attempt, fallbacks = self._options, []
        while True:
            try:
                thin, affine = predict(
                    self._model,
                    self._hu,
                    self._affine,
                    attempt,
                    progress=self._report,
                    cancel=self._cancel.is_set,
                    window=self._window,
                    trained_spacing_mm=self._trained_spacing_mm,
                )
                break
            except torch.cuda.OutOfMemoryError as error:
                _release_gpu_memory(torch)
                retry = next_attempt(attempt, self._options, self._hu.shape[1:])
                if retry is None:
                    raise MemoryError(
                        "out of memory even with batch 1, the smallest tiles and the CPU; close other "
                        f"programs or crop the volume ({error})"
                    ) from error
                note = describe_change(attempt, retry)
                fallbacks.append(note)
                self._report(0.0, note)
                attempt = retry
        device = describe_device(resolve_device(attempt.device))
        return InferenceOutcome(
            thin, affine, attempt, device, time.perf_counter() - started, tuple(fallbacks)
        )


def _release_gpu_memory(torch: Any) -> None:
    """Give cached GPU blocks back before a retry."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

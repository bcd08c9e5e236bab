"""The run layer: super-resolve one study or many from a typed request, and write each labelled.

`PredictRequest` holds everything `volumetricsr predict` was asked; `predict_one` and `predict_many`
load each model once (`Engines`: the request's model, or per study the bundled model made for its
slice thickness), check the output before any work, read, super-resolve, write the thin CT labelled
synthetic and tell a `RunListener` what happened. The command line turns arguments into a request
and the listener's calls into printed lines or JSON events; the demo loads its model through
`Engines` too.
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..geometry import GeometryError, slice_spacing
from ..inference.adapt import AdaptOptions
from ..inference.device import DeviceError, resolve_device, use_physical_cores
from ..inference.predictor import InputError, PredictionCancelled, PredictOptions
from ..inference.study import StudyOptions, ThinStudy, super_resolve_study
from ..io.volume_io import (
    Volume,
    VolumeFileError,
    check_output_path,
    check_room,
    output_format,
    read_volume,
    write_volume,
)
from ..models.architectures import label_of
from ..models.model_cards import ModelCard, model_for_slices, read_card, resolve_card_path
from ..models.weights import ModelFileError, NoModelError, default_model_path, load_model
from .batch import Outcome, Ranks, Study, gather_outcomes, plan_studies, rank_share

USER_ERRORS = (VolumeFileError, ModelFileError, InputError, GeometryError, DeviceError)
GPU_MEMORY_ADVICE = "the GPU ran out of memory; use a smaller --tile (e.g. 256), --batch 1 or --device cpu"
MEMORY_ADVICE = "out of memory; use a smaller --tile (e.g. 256) and --batch 1"

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class PredictRequest:
    """What `volumetricsr predict` was asked: the inputs (and, without `output_dir`, the output last, as
    typed: a trailing '/' asks for a DICOM folder), the model and device, the predictor's and the
    output's options."""

    paths: tuple[str, ...]
    output_dir: Path | None = None
    series: str | None = None
    model: str | None = None
    allow_untrained: bool = False
    predict: PredictOptions = field(default_factory=PredictOptions)
    spacing_mm: float | None = None
    enforce_consistency: bool = False
    adapt_steps: int = 0
    out_format: str = "auto"
    overwrite: bool = False
    compress: bool = True
    burn_in_marker: bool = False


@dataclass(frozen=True)
class StudyResult:
    """One study super-resolved and written."""

    engine: Engine
    study: ThinStudy
    seconds: float
    output: Path
    volume: Volume


class RunListener(Protocol):
    """What a run tells its caller (the command line prints it or writes it as events)."""

    def study_started(self, place: str, study: Study, ranks: Ranks) -> None:
        """One study of many begins (`place` is "n/N")."""

    def progress(self) -> AbstractContextManager[Progress | None]:
        """The progress callback of one study, open while it is super-resolved."""

    def fallback(self, message: str) -> None:
        """The predictor fell back (smaller tiles, the CPU)."""

    def study_done(self, result: StudyResult, many: bool) -> None:
        """A study was written (`many`: one of a run over many studies)."""

    def study_outcome(self, outcome: Outcome, ranks: Ranks) -> None:
        """One study of many ended (done, skipped or failed)."""


@dataclass(frozen=True)
class Engine:
    """What every study of a run shares: the model (loaded once), its card and the options (device too)."""

    model: nn.Module
    card: ModelCard
    options: StudyOptions


class Engines:
    """The models of a run, each loaded once: the request's model for every study, or per study the
    bundled model made for its slice thickness (`model_for_slices`)."""

    def __init__(self, request: PredictRequest, ranks: Ranks) -> None:
        self.request = request
        device = resolve_device(device_of_rank(request.predict.device, ranks))
        predict = replace(request.predict, device=str(device))
        adapt = AdaptOptions(steps=request.adapt_steps)
        self.options = StudyOptions(predict, request.spacing_mm, request.enforce_consistency, adapt)
        self.loaded: dict[str, Engine] = {}
        # a bad model, or no model at all, fails the run before its first study
        if request.model is not None:
            self.engine(request.model)
        elif default_model_path() is None:
            raise NoModelError()

    def for_volume(self, volume: Volume) -> Engine:
        """The engine of one study."""
        return self.engine(model_for(self.request, slice_spacing(volume.affine)))

    def engine(self, model_path: str | Path | None) -> Engine:
        """The engine of a model file or bundled id (None: the bundled default), loaded once."""
        model_path = model_path if model_path is not None else default_model_path()
        if model_path is None:
            raise NoModelError()
        key = str(model_path)
        if key not in self.loaded:
            model, card = load_model(model_path, device="cpu", allow_untrained=self.request.allow_untrained)
            if not card.trained:
                warnings.warn(
                    f"{card.id} holds untrained weights: the output is not a super-resolved CT", stacklevel=1
                )
            self.loaded[key] = Engine(model, card, self.options)
        return self.loaded[key]


def predict_one(request: PredictRequest, listener: RunListener) -> StudyResult:
    """Super-resolve the request's one input into its output; every check before the model loads."""
    if len(request.paths) != 2:
        raise VolumeFileError(
            f"predict takes an INPUT and an OUTPUT, got {len(request.paths)} path(s); to super-resolve "
            "several studies give them with --output-dir DIR"
        )
    source, target = Path(request.paths[0]), request.paths[1]
    output = check_output_path(source, target, request.overwrite, request.out_format)
    check_marker(request, output_format(target, request.out_format))
    use_physical_cores()
    volume = read_volume(source, request.series)
    check_room(output, expected_bytes(request, volume))
    engine = Engines(request, Ranks()).for_volume(volume)
    result = replace(super_resolve(request, engine, volume, source, target, listener), output=output)
    listener.study_done(result, many=False)
    return result


@dataclass(frozen=True)
class ManyStudies:
    """The end of a run over many studies: every rank's outcomes (rank 0; None on the others), or the
    message of an interrupt."""

    outcomes: list[Outcome] | None
    interrupted: str | None = None


def predict_many(request: PredictRequest, listener: RunListener) -> ManyStudies:
    """Every input into the request's output folder: this rank's share, one failure not stopping the
    rest; rank 0 gathers every rank's outcomes."""
    if request.output_dir is None:
        raise VolumeFileError("many studies need an output folder (--output-dir DIR)")
    if request.series is not None and len(request.paths) > 1:
        raise VolumeFileError(
            "--series chooses a series in one DICOM folder; give a single input with --series, or run the "
            "folders one at a time"
        )
    out_format = "nifti" if request.out_format == "auto" else request.out_format
    check_marker(request, out_format)
    ranks = torchrun_ranks()
    output_dir = output_folder(request.output_dir)
    studies = plan_studies([Path(path) for path in request.paths], output_dir, out_format)
    mine = rank_share(studies, ranks)
    use_physical_cores()
    engines = Engines(request, ranks)
    outcomes: list[Outcome] = []
    for n, study in enumerate(mine, 1):
        try:
            outcome = one_of_many(request, engines, study, f"{n}/{len(mine)}", ranks, listener)
        except StudyInterrupted as interrupt:
            return ManyStudies(None, interrupted_message(outcomes, interrupt, output_dir))
        listener.study_outcome(outcome, ranks)
        outcomes.append(outcome)
    return ManyStudies(gather_outcomes(outcomes, ranks))


class StudyInterrupted(Exception):
    """Ctrl-C (or a cancel) during one study of many: which one, and whether its output was written."""

    def __init__(self, study: str, place: str, written: bool) -> None:
        super().__init__(f"interrupted during study {place} ({study})")
        self.study, self.place, self.written = study, place, written


def one_of_many(
    request: PredictRequest, engines: Engines, study: Study, place: str, ranks: Ranks, listener: RunListener
) -> Outcome:
    """Run one study of many; any failure but an interrupt becomes a "failed" outcome (an interrupt
    becomes StudyInterrupted, which says whether the study's output was written)."""
    name = str(study.input)
    listener.study_started(place, study, ranks)
    start = time.perf_counter()
    if study.output.exists() and not request.overwrite:
        return Outcome(name, "skipped", 0.0, f"{study.output} exists (--overwrite redoes it)")
    target = f"{study.output}/" if request.out_format == "dicom" else str(study.output)
    written = False
    try:
        check_output_path(study.input, target, request.overwrite, request.out_format)
        volume = read_volume(study.input, request.series)
        check_room(study.output, expected_bytes(request, volume))
        engine = engines.for_volume(volume)
        result = super_resolve(request, engine, volume, study.input, target, listener)
        written = True
        listener.study_done(replace(result, output=study.output), many=True)
        return Outcome(name, "done", time.perf_counter() - start, str(study.output))
    except (KeyboardInterrupt, PredictionCancelled) as interrupt:
        raise StudyInterrupted(name, place, written) from interrupt
    except Exception as error:  # one study's failure, whatever it is, must not stop the others
        return Outcome(name, "failed", time.perf_counter() - start, failure_message(error))


def super_resolve(
    request: PredictRequest,
    engine: Engine,
    volume: Volume,
    source: Path,
    target: str,
    listener: RunListener,
) -> StudyResult:
    """Super-resolve one volume (progress and fallbacks to the listener) and write it to `target`."""
    start = time.perf_counter()
    with listener.progress() as report:
        study = super_resolve_study(
            engine.model,
            engine.card,
            volume.array,
            volume.affine,
            engine.options,
            on_fallback=listener.fallback,
            progress=report,
        )
    seconds = time.perf_counter() - start
    output = write_thin(request, target, study, volume, source, engine.card)
    return StudyResult(engine, study, seconds, output, volume)


def write_thin(
    request: PredictRequest, target: str, study: ThinStudy, volume: Volume, source: Path, card: ModelCard
) -> Path:
    """Write the thin CT labelled synthetic (model id, weights sha256, input, resampling) with its
    consistency check; a DICOM series goes into the input's study when the input was DICOM, else into a
    new anonymous one (and a warning says so)."""
    synthetic = {
        "model": card.id,
        "architecture": label_of(card.config),
        "model_sha256": card.sha256,
        "source": Path(source).name,
    }
    if study.resampling is not None:
        synthetic["slice_resampling"] = study.resampling
    if study.adaptation is not None:
        synthetic["adaptation"] = study.adaptation.line()
    if volume.dicom is not None:
        synthetic["source_series_uid"] = volume.dicom.series_uid
    elif output_format(target, request.out_format) == "dicom":
        warnings.warn(
            f"the input is not DICOM, so the series in {Path(target)} is filed under a new anonymous patient "
            "and study; move it to the right patient in your DICOM tools if needed",
            stacklevel=1,
        )
    return write_volume(
        target,
        study.hu,
        study.affine,
        overwrite=request.overwrite,
        input_path=source,
        compress=request.compress,
        synthetic=synthetic,
        out_format=request.out_format,
        dicom_source=volume.dicom,
        consistency=study.consistency,
        burn_in_marker=request.burn_in_marker,
    )


def check_marker(request: PredictRequest, kind: str) -> None:
    """A burned-in marker asks for DICOM output: refused before any work otherwise."""
    if request.burn_in_marker and kind != "dicom":
        raise VolumeFileError(
            "a burned-in SYNTHETIC marker (--burn-in-marker) is for DICOM output, whose viewers may drop "
            "the header's labels; this output is a file whose header says synthetic: leave the option out, "
            "or write DICOM (an output folder, or --format dicom)"
        )


def expected_bytes(request: PredictRequest, volume: Volume) -> int:
    """About how many bytes the thin output of `volume` takes (int16, uncompressed): its thin spacing is
    the request's, else the card's of the model that will run (1 mm where no card can be read)."""
    input_mm = slice_spacing(volume.affine)
    thin_mm = request.spacing_mm
    if thin_mm is None:
        try:
            path = model_for(request, input_mm)
            thin_mm = read_card(resolve_card_path(path)).thin_spacing_mm if path is not None else None
        except ModelFileError:
            thin_mm = None
    return int(2 * volume.array.size * input_mm / (thin_mm or 1.0))


def model_for(request: PredictRequest, slice_mm: float) -> str | Path | None:
    """The model a study of `slice_mm` slices runs: the request's, else the bundled one for its thickness."""
    return request.model if request.model is not None else model_for_slices(slice_mm, request.spacing_mm)


def device_of_rank(requested: str, ranks: Ranks) -> str:
    """Under torchrun with several processes, a GPU request means this process's GPU (LOCAL_RANK)."""
    wants_gpu = str(requested).strip().lower() in ("auto", "cuda", "gpu")
    if ranks.world > 1 and wants_gpu and torch.cuda.is_available():
        return f"cuda:{ranks.local}"
    return requested


def torchrun_ranks() -> Ranks:
    """This process's rank under torchrun (rank 0 of 1 without it)."""
    try:
        return Ranks.from_environment()
    except ValueError as error:
        raise InputError(f"the torchrun environment is inconsistent: {error}") from None


def output_folder(folder: Path) -> Path:
    """The output folder of many studies, created if it does not exist."""
    if folder.exists() and not folder.is_dir():
        raise VolumeFileError(f"--output-dir {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise VolumeFileError(f"cannot create the output folder {folder}: {reason}") from error
    return folder


def interrupted_message(done: list[Outcome], interrupt: StudyInterrupted, output_dir: Path) -> str:
    """What an interrupt of many studies leaves: the studies written before it, and the one it hit."""
    written = sum(outcome.status == "done" for outcome in done) + interrupt.written
    if interrupt.written:
        current = f"interrupted after study {interrupt.place} ({interrupt.study}) was written"
    else:
        current = f"interrupted during study {interrupt.place} ({interrupt.study}), which was not written"
    if not written:
        return f"{current}; nothing was written"
    studies = "1 study was" if written == 1 else f"{written} studies were"
    return f"{current}; {studies} written to {output_dir} in this run"


def failure_message(error: BaseException) -> str:
    """One line for a failure: the message of a user error, advice for memory, else type and message
    (with the traceback on stderr)."""
    if isinstance(error, USER_ERRORS):
        return str(error)
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return GPU_MEMORY_ADVICE
    if isinstance(error, MemoryError):
        return str(error) or MEMORY_ADVICE
    traceback.print_exc()
    return f"{type(error).__name__}: {error}"


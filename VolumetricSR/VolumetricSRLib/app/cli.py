"""The `volumetricsr` command: predict (super-resolve a CT file with the model, TVSRN by default), devices,
summary (parameter counts), demo.

With `--progress json`, `predict` writes one JSON object per line on stdout (the protocol that
`child_run` follows): {"event": "progress", "fraction", "message"}, {"event": "warning", "message"},
{"event": "fallback", "message"}, then {"event": "done", ...} or {"event": "error", "message", "code"}.
With --output-dir (many studies) each study ends with {"event": "study", "rank", "study", "status",
"seconds", "detail"} instead of "done", and the run with {"event": "summary", "studies", "failed"}; an
interrupt says how many studies were written before it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..geometry import GeometryError, slice_spacing, voxel_spacing
from ..inference.allocator import peak_rss_bytes
from ..inference.device import DeviceError, describe_device, resolve_device, use_physical_cores
from ..inference.predictor import DEPTH_BLENDS, InputError, PredictionCancelled, PredictOptions
from ..inference.study import StudyOptions, ThinStudy, super_resolve_study
from ..io.volume_io import (
    FORMATS,
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
from ..models.network_config import PAPER_PARAMETERS, SIZES
from ..models.tvsrn import TVSRN, VARIANTS, TVSRNConfig
from ..models.weights import ModelFileError, NoModelError, default_model_path, load_model
from . import demo
from .batch import Outcome, Ranks, Study, gather_outcomes, plan_studies, rank_share, summary_table
from .cli_common import add_model_and_device_arguments, progress_bar, show_progress
from .events import Devices, Done, Failed, Fallback, Progress, Summary, Warned, emit
from .events import Study as StudyEvent

BAD_INPUT = 2
FAILURE = 1
INTERRUPTED = 130
_USER_ERRORS = (VolumeFileError, ModelFileError, InputError, GeometryError, DeviceError)
GPU_MEMORY_ADVICE = "the GPU ran out of memory; use a smaller --tile (e.g. 256), --batch 1 or --device cpu"
MEMORY_ADVICE = "out of memory; use a smaller --tile (e.g. 256) and --batch 1"

# The first component of a state_dict key names the part of the network it belongs to.
_PARTS = {
    "embed": "embedding",
    "patch_embed": "embedding",
    "mask_token": "embedding",
    "encoder": "encoder",
    "vit": "encoder",
    "vit_norm": "encoder",
    "head": "head",
}
PART_COLUMNS = ("embedding", "encoder", "TAB", "decoder", "head")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its three subcommands."""
    parser = argparse.ArgumentParser(
        prog="volumetricsr",
        description="Super-resolve thick-slice CT (e.g. 5 mm) to thin slices (1 mm) with the model (TVSRN by "
        "default).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{predict,devices,summary,demo}")

    predict = commands.add_parser(
        "predict",
        help="super-resolve a CT volume file or DICOM series",
        description="Read a thick CT (.nii, .nii.gz, .nrrd, .nhdr, .mha or a folder holding a DICOM series), "
        "super-resolve it along its slice axis (the array axis with clearly the coarsest spacing) and write "
        "the thin CT (int16 HU) in the format given by OUTPUT: a file by its extension, or a derived DICOM "
        "series in a folder. With --output-dir, many studies in one run (and, under torchrun, shared "
        "among the processes).",
    )
    predict.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="INPUT OUTPUT: a thick CT (a volume file: .nii, .nii.gz, .nrrd, ...; or a DICOM series "
        "folder) and the thin CT to write (.nii, .nii.gz or .nrrd, or a folder - an existing one or a path "
        "ending in '/' - for a DICOM series); or, with --output-dir, one or more inputs",
    )
    predict.add_argument(
        "--output-dir",
        type=Path,
        help="many studies: write the thin CT of every input PATH into this folder (created if needed) "
        "as <name>_thin.nii.gz (a <name>_thin DICOM folder with --format dicom); skips existing outputs",
    )
    predict.add_argument(
        "--series", help="SeriesInstanceUID of the series to read when the input folder holds several"
    )
    predict.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="auto (by OUTPUT: extension or folder) or dicom (write a DICOM series into the folder OUTPUT)",
    )
    add_model_and_device_arguments(predict)
    predict.add_argument(
        "--spacing",
        type=float,
        metavar="MM",
        help="output slice spacing in mm (default: the model card's thin spacing, e.g. 1 mm); the model's "
        "slices (input spacing / ratio) are resampled with a cubic B-spline when it differs",
    )
    predict.add_argument(
        "--enforce-consistency",
        action="store_true",
        help="correct the prediction so that each full slab of thin slices re-thickens to its measured thick "
        "slice (the labels say so)",
    )
    predict.add_argument(
        "--tile", type=int, help="in-plane tile size in pixels, to save memory (default: whole slices)"
    )
    predict.add_argument(
        "--overlap", type=int, default=32, help="in-plane tile overlap in pixels (default: 32)"
    )
    predict.add_argument(
        "--depth-overlap",
        type=int,
        default=1,
        help="thick slices shared by neighbouring windows (default: 1)",
    )
    predict.add_argument(
        "--batch", type=int, help="windows per network call (default: 1 on the CPU, from free GPU memory)"
    )
    predict.add_argument(
        "--no-amp", dest="amp", action="store_false", help="float32 on the GPU (default: bfloat16/float16)"
    )
    predict.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="bfloat16 on a CPU that has it natively (faster; about 2 HU mean difference)",
    )
    predict.add_argument(
        "--depth-blend",
        choices=DEPTH_BLENDS,
        default="mean",
        help="shared thin slices: mean of the windows, or the central ones, later windows overwriting "
        "(the authors' scheme, with --depth-overlap 2) (default: mean)",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it exists (a folder: only one holding a synthetic series VolumetricSR "
        "wrote); with --output-dir, redo the studies whose output exists instead of skipping them",
    )
    predict.add_argument(
        "--burn-in-marker",
        action="store_true",
        help="DICOM output: write the word SYNTHETIC into a corner of every slice (BurnedInAnnotation YES), "
        "for viewers that drop the header's labels (default: off, the pixels are the prediction's)",
    )
    predict.add_argument(
        "--no-compress",
        dest="compress",
        action="store_false",
        help="write NRRD without gzip (faster, larger; for temporary files)",
    )
    predict.add_argument(
        "--allow-untrained", action="store_true", help="accept untrained weights (only to test the pipeline)"
    )
    predict.add_argument(
        "--progress",
        choices=("bar", "json", "none"),
        default="bar",
        help="bar (on a terminal), json (one JSON object per line on stdout, for programs) or none",
    )
    predict.set_defaults(handler=run_predict)

    devices = commands.add_parser(
        "devices",
        help="the GPU this machine offers (or why none is usable) and the CPU threads",
        description="Say which device `--device auto` would use: the GPU found, or why none can be used.",
    )
    devices.add_argument("--json", action="store_true", help="one JSON object on stdout")
    devices.set_defaults(handler=run_devices)

    summary = commands.add_parser(
        "summary",
        help="parameter counts of the network variants or of a model file",
        description="Print the parameter counts of TVSRN variants at the compact and the paper size (beside "
        "the counts the paper reports) or of a model file, per part: embedding, encoder, TAB, decoder (axial "
        "layers of the FIM) and head.",
    )
    summary.add_argument(
        "--variant", choices=(*VARIANTS, "all"), default="all", help="variant (default: all)"
    )
    summary.add_argument("--size", choices=(*SIZES, "all"), default="all", help="network size (default: all)")
    summary.add_argument("--model", help="model file (.safetensors or .json) or id of a bundled model")
    summary.set_defaults(handler=run_summary)

    demo_command = commands.add_parser(
        "demo", help="run the demonstration", description="Run the demonstration."
    )
    demo.add_demo_arguments(demo_command)
    demo_command.set_defaults(handler=demo.run_demo_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `volumetricsr`; returns the exit code (0 success, 2 bad input, 1 failure)."""
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "progress", None) == "json"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _emit_warning if as_json else _print_warning
        try:
            return args.handler(args)
        except _USER_ERRORS as exc:
            return _fail(str(exc), BAD_INPUT, as_json)
        except torch.cuda.OutOfMemoryError:
            return _fail(GPU_MEMORY_ADVICE, FAILURE, as_json)
        except MemoryError as exc:
            return _fail(str(exc) or MEMORY_ADVICE, FAILURE, as_json)
        except (KeyboardInterrupt, PredictionCancelled):
            return _fail("interrupted; nothing was written", INTERRUPTED, as_json)
        except Exception as exc:
            if not as_json:
                raise
            traceback.print_exc()  # the whole story on stderr, one line for the program that reads stdout
            return _fail(f"{type(exc).__name__}: {exc}", FAILURE, as_json)


def _fail(message: str, code: int = FAILURE, as_json: bool = False) -> int:
    print(f"error: {message}", file=sys.stderr)
    if as_json:
        emit(Failed(message, code))
    return code


def _emit_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None, line=None
) -> None:
    """warnings.showwarning replacement for --progress json: a warning event only (stdout)."""
    emit(Warned(str(message)))


def _print_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None, line=None
) -> None:
    """warnings.showwarning replacement: one plain line on stderr, on a line of its own above a progress
    bar (tqdm.write moves the bar down)."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    """The `predict` command: one study (INPUT OUTPUT), or many (INPUT ... --output-dir DIR)."""
    if args.output_dir is not None:
        return _predict_many(args)
    if len(args.paths) != 2:
        raise VolumeFileError(
            f"predict takes an INPUT and an OUTPUT, got {len(args.paths)} path(s); to super-resolve several "
            "studies give them with --output-dir DIR"
        )
    source, target = Path(args.paths[0]), args.paths[1]  # as typed: a trailing '/' asks for a DICOM folder
    output = check_output_path(source, target, args.overwrite, args.format)
    _check_marker(args, output_format(target, args.format))
    use_physical_cores()
    volume = read_volume(source, args.series)
    check_room(output, _expected_bytes(args, volume))
    engine = _Engines(args, Ranks()).for_volume(volume)
    study, seconds = _super_resolve(args, engine, volume, source, target)
    _report(args, engine, study, seconds, output, volume)
    return 0


@dataclass(frozen=True)
class _Engine:
    """What every study of a run shares: the model (loaded once), its card and the options (device too)."""

    model: nn.Module
    card: ModelCard
    options: StudyOptions


class _Engines:
    """The models of a run, each loaded once: --model for every study, or per study the bundled model
    made for its slice thickness (`model_for_slices`)."""

    def __init__(self, args: argparse.Namespace, ranks: Ranks) -> None:
        self.args = args
        device = resolve_device(_device_of_rank(args.device, ranks))
        predict = PredictOptions(
            device=str(device),
            tile=args.tile,
            tile_overlap=args.overlap,
            depth_overlap=args.depth_overlap,
            batch=args.batch,
            amp=args.amp,
            cpu_bf16=args.cpu_bf16,
            depth_blend=args.depth_blend,
        )
        self.options = StudyOptions(predict, args.spacing, args.enforce_consistency)
        self.loaded: dict[str, _Engine] = {}
        # a bad --model, or no model at all, fails the run before its first study
        if args.model is not None:
            self._engine(args.model)
        elif default_model_path() is None:
            raise NoModelError()

    def for_volume(self, volume: Volume) -> _Engine:
        """The engine of one study."""
        if self.args.model is not None:
            return self._engine(self.args.model)
        return self._engine(_model_for(self.args, slice_spacing(volume.affine)))

    def _engine(self, model_path: str | Path) -> _Engine:
        key = str(model_path)
        if key not in self.loaded:
            model, card = load_model(model_path, device="cpu", allow_untrained=self.args.allow_untrained)
            if not card.trained:
                warnings.warn(
                    f"{card.id} holds untrained weights: the output is not a super-resolved CT", stacklevel=1
                )
            self.loaded[key] = _Engine(model, card, self.options)
        return self.loaded[key]


def _check_marker(args: argparse.Namespace, kind: str) -> None:
    """--burn-in-marker asks for DICOM output: refused before any work otherwise."""
    if args.burn_in_marker and kind != "dicom":
        raise VolumeFileError(
            "a burned-in SYNTHETIC marker (--burn-in-marker) is for DICOM output, whose viewers may drop "
            "the header's labels; this output is a file whose header says synthetic: leave the option out, "
            "or write DICOM (an output folder, or --format dicom)"
        )


def _expected_bytes(args: argparse.Namespace, volume: Volume) -> int:
    """About how many bytes the thin output of `volume` takes (int16, uncompressed): its thin spacing is
    --spacing, else the card's of the model that will run (1 mm where no card can be read)."""
    input_mm = slice_spacing(volume.affine)
    thin_mm = args.spacing
    if thin_mm is None:
        try:
            path = _model_for(args, input_mm)
            thin_mm = read_card(resolve_card_path(path)).thin_spacing_mm if path is not None else None
        except ModelFileError:
            thin_mm = None
    return int(2 * volume.array.size * input_mm / (thin_mm or 1.0))


def _model_for(args: argparse.Namespace, slice_mm: float) -> str | Path | None:
    """The model a study of `slice_mm` slices runs: --model, else the bundled one for its thickness."""
    return args.model if args.model is not None else model_for_slices(slice_mm, args.spacing)


def _device_of_rank(requested: str, ranks: Ranks) -> str:
    """Under torchrun with several processes, a GPU request means this process's GPU (LOCAL_RANK)."""
    wants_gpu = str(requested).strip().lower() in ("auto", "cuda", "gpu")
    if ranks.world > 1 and wants_gpu and torch.cuda.is_available():
        return f"cuda:{ranks.local}"
    return requested


def _super_resolve(
    args: argparse.Namespace, engine: _Engine, volume: Volume, source: Path, target: str
) -> tuple[ThinStudy, float]:
    """Super-resolve one volume with progress as asked, write it to `target`; (study, seconds)."""
    as_json = args.progress == "json"
    start = time.perf_counter()
    # disable=None: the bar shows on a terminal only, not in logs of batch runs
    bar = progress_bar(disable=None) if args.progress == "bar" else contextlib.nullcontext()
    with bar:
        if as_json:
            report = _emit_progress
        elif args.progress == "bar":
            report = partial(show_progress, bar)
        else:
            report = None
        study = super_resolve_study(
            engine.model,
            engine.card,
            volume.array,
            volume.affine,
            engine.options,
            on_fallback=_emit_fallback if as_json else _warn,
            progress=report,
        )
    seconds = time.perf_counter() - start
    _write_thin(args, target, study, volume, source, engine.card)
    return study, seconds


def _report(
    args: argparse.Namespace, engine: _Engine, study: ThinStudy, seconds: float, output: Path, volume: Volume
) -> None:
    """The done event (--progress json) or the lines for people, after one study."""
    k, j, i = study.hu.shape
    spacing = voxel_spacing(study.affine)
    ran_on = describe_device(resolve_device(study.used.device))
    peak = peak_rss_bytes()
    check = study.consistency
    if args.progress == "json":
        emit(
            Done(
                output=str(output),
                shape=[i, j, k],
                spacing_mm=[float(value) for value in spacing],
                affine=study.affine.tolist(),
                seconds=seconds,
                device=ran_on,
                fallbacks=list(study.fallbacks),
                model=engine.card.id,
                model_sha256=engine.card.sha256,
                ratio=engine.card.ratio,
                peak_rss_bytes=peak,
                slice_axis=study.slice_axis,
                resampling=study.resampling,
                consistency=check.summary() if check is not None else None,
                consistency_line=check.line() if check is not None else None,
            )
        )
        return
    thick_slices = volume.array.shape[study.slice_axis]
    thin_slices = study.hu.shape[study.slice_axis]
    print(f"wrote {output}: {i} x {j} x {k} voxels, spacing {' x '.join(f'{s:.3f}' for s in spacing)} mm")
    axis = f" along array axis {study.slice_axis}" if study.slice_axis else ""
    print(f"super-resolved {thick_slices} -> {thin_slices} slices{axis} in {seconds:.1f} s on {ran_on}")
    print(f"model: {engine.card.id} (x{engine.card.ratio}, {_made_for(engine.card)})")
    if study.resampling is not None:
        print(f"slices resampled: {study.resampling}")
    if check is not None:
        print(check.line())
    if peak is not None:
        print(f"peak memory (resident): {peak / 2**30:.2f} GiB")


def _made_for(card: ModelCard) -> str:
    """What a model was made for, in a few words."""
    if card.thick_spacing_mm and card.thin_spacing_mm:
        return f"made for {card.thick_spacing_mm:g} mm slices into {card.thin_spacing_mm:g} mm"
    return "no slice thickness on its card"


def _write_thin(
    args: argparse.Namespace, target: str, study: ThinStudy, volume: Volume, source: Path, card: ModelCard
) -> None:
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
    if volume.dicom is not None:
        synthetic["source_series_uid"] = volume.dicom.series_uid
    elif output_format(target, args.format) == "dicom":
        warnings.warn(
            f"the input is not DICOM, so the series in {Path(target)} is filed under a new anonymous patient "
            "and study; move it to the right patient in your DICOM tools if needed",
            stacklevel=1,
        )
    write_volume(
        target,
        study.hu,
        study.affine,
        overwrite=args.overwrite,
        input_path=source,
        compress=args.compress,
        synthetic=synthetic,
        out_format=args.format,
        dicom_source=volume.dicom,
        consistency=study.consistency,
        burn_in_marker=args.burn_in_marker,
    )


def _predict_many(args: argparse.Namespace) -> int:
    """Every input into --output-dir: this rank's share, one failure not stopping the rest, a table."""
    if args.series is not None and len(args.paths) > 1:
        raise VolumeFileError(
            "--series chooses a series in one DICOM folder; give a single input with --series, or run the "
            "folders one at a time"
        )
    _check_marker(args, "dicom" if args.format == "dicom" else "nifti")
    ranks = _ranks()
    output_dir = _output_folder(args.output_dir)
    out_format = "nifti" if args.format == "auto" else args.format
    studies = plan_studies([Path(path) for path in args.paths], output_dir, out_format)
    mine = rank_share(studies, ranks)
    use_physical_cores()
    engines = _Engines(args, ranks)
    outcomes: list[Outcome] = []
    for n, study in enumerate(mine, 1):
        try:
            outcomes.append(_one_study(args, engines, study, f"{n}/{len(mine)}", ranks))
        except _StudyInterrupted as interrupt:
            message = _interrupted_message(outcomes, interrupt, output_dir)
            return _fail(message, INTERRUPTED, args.progress == "json")
    everyone = gather_outcomes(outcomes, ranks)
    if everyone is None:  # rank 0 reports every study
        return 0
    return _summarise(args, everyone)


def _ranks() -> Ranks:
    try:
        return Ranks.from_environment()
    except ValueError as error:
        raise InputError(f"the torchrun environment is inconsistent: {error}") from None


def _output_folder(folder: Path) -> Path:
    """The --output-dir folder, created if it does not exist."""
    if folder.exists() and not folder.is_dir():
        raise VolumeFileError(f"--output-dir {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or error
        raise VolumeFileError(f"cannot create the output folder {folder}: {reason}") from error
    return folder


class _StudyInterrupted(Exception):
    """Ctrl-C (or a cancel) during one study of many: which one, and whether its output was written."""

    def __init__(self, study: str, place: str, written: bool) -> None:
        super().__init__(f"interrupted during study {place} ({study})")
        self.study, self.place, self.written = study, place, written


def _interrupted_message(done: list[Outcome], interrupt: _StudyInterrupted, output_dir: Path) -> str:
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


def _one_study(
    args: argparse.Namespace, engines: _Engines, study: Study, place: str, ranks: Ranks
) -> Outcome:
    """Run one study of many; any failure but an interrupt becomes a "failed" outcome (an interrupt
    becomes _StudyInterrupted, which says whether the study's output was written)."""
    name = str(study.input)
    as_json = args.progress == "json"
    if not as_json:
        who = f"rank {ranks.rank} of {ranks.world}, " if ranks.world > 1 else ""
        print(f"[{who}study {place}] {name} -> {study.output}", flush=True)
    start = time.perf_counter()
    if study.output.exists() and not args.overwrite:
        outcome = Outcome(name, "skipped", 0.0, f"{study.output} exists (--overwrite redoes it)")
    else:
        target = f"{study.output}/" if args.format == "dicom" else str(study.output)
        written = False
        try:
            check_output_path(study.input, target, args.overwrite, args.format)
            volume = read_volume(study.input, args.series)
            check_room(study.output, _expected_bytes(args, volume))
            engine = engines.for_volume(volume)
            result, seconds = _super_resolve(args, engine, volume, study.input, target)
            written = True
            if not as_json:
                _report(args, engine, result, seconds, study.output, volume)
            outcome = Outcome(name, "done", time.perf_counter() - start, str(study.output))
        except (KeyboardInterrupt, PredictionCancelled) as interrupt:
            raise _StudyInterrupted(name, place, written) from interrupt
        except Exception as error:  # one study's failure, whatever it is, must not stop the others
            message = _failure_message(error)
            print(f"error: {name}: {message}", file=sys.stderr, flush=True)
            outcome = Outcome(name, "failed", time.perf_counter() - start, message)
    if as_json:
        emit(StudyEvent(rank=ranks.rank, **asdict(outcome)))
    return outcome


def _summarise(args: argparse.Namespace, outcomes: list[Outcome]) -> int:
    """The table of every study (stdout; stderr with --progress json) and the exit code."""
    failed = [outcome.study for outcome in outcomes if outcome.status == "failed"]
    table = summary_table(outcomes)
    if args.progress == "json":
        print(table, file=sys.stderr)
        emit(Summary([asdict(outcome) for outcome in outcomes], failed))
    else:
        print(table)
    if failed:
        print(f"error: {len(failed)} of {len(outcomes)} studies failed: {', '.join(failed)}", file=sys.stderr)
        return FAILURE
    return 0


def _failure_message(error: BaseException) -> str:
    """One line for a failure: the message of a user error, advice for memory, else type and message
    (with the traceback on stderr)."""
    if isinstance(error, _USER_ERRORS):
        return str(error)
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return GPU_MEMORY_ADVICE
    if isinstance(error, MemoryError):
        return str(error) or MEMORY_ADVICE
    traceback.print_exc()
    return f"{type(error).__name__}: {error}"


def _emit_progress(fraction: float, message: str) -> None:
    emit(Progress(round(float(fraction), 6), message))


def _emit_fallback(message: str) -> None:
    emit(Fallback(message))


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=1)


def run_devices(args: argparse.Namespace) -> int:
    """The `devices` command: the GPU `--device auto` would use, or why there is none."""
    try:
        gpu: str | None = describe_device(resolve_device("cuda"))
        reason = None
    except DeviceError as error:
        gpu, reason = None, str(error)
    threads = use_physical_cores()
    line = f"GPU: {gpu}" if gpu else f"CPU only ({threads} threads): {reason}"
    if args.json:
        emit(Devices(line, threads, torch.__version__, torch.version.cuda, gpu, reason))
    else:
        print(f"{line} (PyTorch {torch.__version__})")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    """The `summary` command."""
    if args.model is not None:
        network, card = load_model(args.model, allow_untrained=True)
        state = "trained" if card.trained else "UNTRAINED"
        print(f"{card.id}: {card.name} ({state}, x{card.ratio}, variant {card.config.variant})")
        print(_parts_table({card.id: parameter_parts(network)}))
        return 0
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    sizes = SIZES if args.size == "all" else (args.size,)
    rows = {}
    for size in sizes:
        for variant in variants:
            with torch.device("meta"):  # shapes only: nothing is allocated
                parts = parameter_parts(TVSRN(TVSRNConfig.variant_defaults(variant, size)))
            paper = round(PAPER_PARAMETERS[variant])
            rows[f"{size}:{variant}"] = {**parts, "paper": paper, "delta%": parts["total"] / paper - 1}
    print(_parts_table(rows))
    return 0


def parameter_parts(network: nn.Module) -> dict[str, int]:
    """Trainable parameters per part (PART_COLUMNS, plus "other" for anything unrecognised) and total."""
    counts = dict.fromkeys(PART_COLUMNS, 0)
    for name, parameter in network.named_parameters():
        if not parameter.requires_grad:
            continue
        top = name.split(".", 1)[0]
        part = _PARTS.get(top, "other")
        if top == "fims":
            part = "TAB" if ".tab." in name else "decoder"
        counts[part] = counts.get(part, 0) + parameter.numel()
    counts["total"] = sum(counts.values())
    return counts


def _parts_table(rows: dict[str, dict[str, float]]) -> str:
    """Counts per part and total; the paper's count and the relative difference where rows have them."""
    extra = ["other"] if any("other" in row for row in rows.values()) else []
    versus = ["paper", "delta%"] if any("paper" in row for row in rows.values()) else []
    columns = [*PART_COLUMNS, *extra, "total", *versus]
    width = max(len("variant"), *(len(name) for name in rows))
    lines = [f"{'variant':<{width}}" + "".join(f"{column:>12}" for column in columns)]
    for name, row in rows.items():
        cells = [
            f"{100 * row[column]:>+12.1f}" if column == "delta%" else f"{row.get(column, 0):>12,}"
            for column in columns
        ]
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

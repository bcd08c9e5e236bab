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
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..geometry import voxel_spacing
from ..inference.allocator import peak_rss_bytes
from ..inference.device import DeviceError, describe_device, resolve_device, use_physical_cores
from ..inference.predictor import DEPTH_BLENDS, PredictionCancelled, PredictOptions
from ..io.volume_io import FORMATS
from ..models.model_cards import ModelCard
from ..models.network_config import PAPER_PARAMETERS, SIZES
from ..models.tvsrn import TVSRN, VARIANTS, TVSRNConfig
from ..models.weights import load_model
from . import demo
from .batch import Outcome, Ranks, Study, summary_table
from .cli_common import add_model_and_device_arguments, progress_bar, show_progress
from .events import Devices, Done, Failed, Fallback, Progress, Summary, Warned, emit
from .events import Study as StudyEvent
from .run import (
    GPU_MEMORY_ADVICE,
    MEMORY_ADVICE,
    USER_ERRORS,
    PredictRequest,
    StudyResult,
    predict_many,
    predict_one,
)

BAD_INPUT = 2
FAILURE = 1
INTERRUPTED = 130
DEFAULT_ADAPT_STEPS = 100

# The first component of a state_dict key names the part of the network it belongs to.
_PARTS = {
    "embed": "embedding",
    "patch_embed": "embedding",
    "mask_token": "embedding",
    "encoder": "encoder",
    "vit": "encoder",
    "vit_norm": "encoder",
    "head": "head",
    "depth_mix": "head",
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
        "--adapt",
        type=int,
        nargs="?",
        const=DEFAULT_ADAPT_STEPS,
        default=0,
        metavar="STEPS",
        help=f"before predicting, fine-tune a copy of the model on pairs made from the scan's own in-plane "
        f"axes for STEPS steps (default {DEFAULT_ADAPT_STEPS}); kept only if it lowers the error on held-out "
        "pairs of the scan (the labels say so). Off by default: see the README for when it helps",
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
        except USER_ERRORS as exc:
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
    request, reporter = predict_request(args), _Reporter(args.progress)
    if args.output_dir is None:
        predict_one(request, reporter)
        return 0
    run = predict_many(request, reporter)
    if run.interrupted is not None:
        return _fail(run.interrupted, INTERRUPTED, args.progress == "json")
    if run.outcomes is None:  # not rank 0: rank 0 reports every study
        return 0
    return _summarise(args, run.outcomes)


def predict_request(args: argparse.Namespace) -> PredictRequest:
    """The run layer's request for the parsed `predict` arguments."""
    predict = PredictOptions(
        device=args.device,
        tile=args.tile,
        tile_overlap=args.overlap,
        depth_overlap=args.depth_overlap,
        batch=args.batch,
        amp=args.amp,
        cpu_bf16=args.cpu_bf16,
        depth_blend=args.depth_blend,
    )
    return PredictRequest(
        paths=tuple(str(path) for path in args.paths),
        output_dir=args.output_dir,
        series=args.series,
        model=args.model,
        allow_untrained=args.allow_untrained,
        predict=predict,
        spacing_mm=args.spacing,
        enforce_consistency=args.enforce_consistency,
        adapt_steps=args.adapt,
        out_format=args.format,
        overwrite=args.overwrite,
        compress=args.compress,
        burn_in_marker=args.burn_in_marker,
    )


class _Reporter:
    """How `predict` shows a run (a RunListener): lines and a progress bar for people, or JSON events
    on stdout (--progress json)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.as_json = mode == "json"

    def study_started(self, place: str, study: Study, ranks: Ranks) -> None:
        if not self.as_json:
            who = f"rank {ranks.rank} of {ranks.world}, " if ranks.world > 1 else ""
            print(f"[{who}study {place}] {study.input} -> {study.output}", flush=True)

    @contextlib.contextmanager
    def progress(self) -> Iterator[Callable[[float, str], None] | None]:
        if self.as_json:
            yield _emit_progress
        elif self.mode == "bar":
            with progress_bar(disable=None) as bar:  # disable=None: on a terminal only, not in logs
                yield partial(show_progress, bar)
        else:
            yield None

    def fallback(self, message: str) -> None:
        if self.as_json:
            emit(Fallback(message))
        else:
            warnings.warn(message, stacklevel=1)

    def study_done(self, result: StudyResult, many: bool) -> None:
        if not (many and self.as_json):  # many studies in JSON: a study event follows instead
            _report(result, self.as_json)

    def study_outcome(self, outcome: Outcome, ranks: Ranks) -> None:
        if outcome.status == "failed":
            print(f"error: {outcome.study}: {outcome.detail}", file=sys.stderr, flush=True)
        if self.as_json:
            emit(StudyEvent(rank=ranks.rank, **asdict(outcome)))


def _report(result: StudyResult, as_json: bool) -> None:
    """The done event (--progress json) or the lines for people, after one study."""
    engine, study, seconds, output, volume = (
        result.engine,
        result.study,
        result.seconds,
        result.output,
        result.volume,
    )
    k, j, i = study.hu.shape
    spacing = voxel_spacing(study.affine)
    ran_on = describe_device(resolve_device(study.used.device))
    peak = peak_rss_bytes()
    check = study.consistency
    if as_json:
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
                adaptation=study.adaptation.line() if study.adaptation is not None else None,
            )
        )
        return
    thick_slices = volume.array.shape[study.slice_axis]
    thin_slices = study.hu.shape[study.slice_axis]
    print(f"wrote {output}: {i} x {j} x {k} voxels, spacing {' x '.join(f'{s:.3f}' for s in spacing)} mm")
    axis = f" along array axis {study.slice_axis}" if study.slice_axis else ""
    print(f"super-resolved {thick_slices} -> {thin_slices} slices{axis} in {seconds:.1f} s on {ran_on}")
    print(f"model: {engine.card.id} (x{engine.card.ratio}, {_made_for(engine.card)})")
    if study.adaptation is not None:
        print(study.adaptation.line())
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



def _emit_progress(fraction: float, message: str) -> None:
    emit(Progress(round(float(fraction), 6), message))



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

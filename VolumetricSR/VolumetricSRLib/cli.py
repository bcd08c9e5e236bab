"""The `volumetricsr` command: predict (super-resolve a CT file), devices, summary (parameter counts), demo.

With `--progress json`, `predict` writes one JSON object per line on stdout (the protocol that
`child_run` follows): {"event": "progress", "fraction", "message"}, {"event": "warning", "message"},
{"event": "fallback", "message"}, then {"event": "done", ...} or {"event": "error", "message", "code"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import demo
from .allocator import peak_rss_bytes
from .cli_common import add_model_and_device_arguments, progress_bar, show_progress
from .device import DeviceError, describe_device, resolve_device, use_physical_cores
from .fallback import super_resolve_with_fallback
from .geometry import GeometryError, voxel_spacing
from .intensity import to_int16_hu
from .model_cards import ModelCard
from .network import TVSRN, VARIANTS, TVSRNConfig
from .predictor import DEPTH_BLENDS, InputError, PredictionCancelled, PredictOptions
from .volume_io import (
    FORMATS,
    Volume,
    VolumeFileError,
    check_output_path,
    output_format,
    read_volume,
    write_volume,
)
from .weights import ModelFileError, NoModelError, default_model_path, load_model

BAD_INPUT = 2
FAILURE = 1
INTERRUPTED = 130
_USER_ERRORS = (VolumeFileError, ModelFileError, InputError, GeometryError, DeviceError)

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
        description="Super-resolve thick-slice CT (e.g. 5 mm) to thin slices (1 mm) with TVSRN.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{predict,devices,summary,demo}")

    predict = commands.add_parser(
        "predict",
        help="super-resolve a CT volume file or DICOM series",
        description="Read a thick CT (.nii, .nii.gz, .nrrd, .nhdr, .mha or a folder holding a DICOM series), "
        "super-resolve it along the slice axis and write the thin CT (int16 HU) in the format given by "
        "OUTPUT: a file by its extension, or a derived DICOM series in a folder.",
    )
    predict.add_argument(
        "input",
        type=Path,
        help="thick CT: a volume file (.nii, .nii.gz, .nrrd, ...) or a DICOM series folder",
    )
    predict.add_argument(
        "output",
        help="thin CT to write: .nii, .nii.gz or .nrrd, or a folder (an existing one or a path ending "
        "in '/') for a DICOM series",
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
        "--overwrite", action="store_true", help="replace OUTPUT if it exists (a folder: only of DICOM files)"
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
        description="Print the parameter counts of TVSRN variants (paper configurations) or of a model file, "
        "per part: embedding, encoder, TAB, decoder (axial layers of the FIM) and head.",
    )
    summary.add_argument(
        "--variant", choices=(*VARIANTS, "all"), default="all", help="variant (default: all)"
    )
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
            message = "the GPU ran out of memory; use a smaller --tile (e.g. 256), --batch 1 or --device cpu"
            return _fail(message, FAILURE, as_json)
        except MemoryError as exc:
            message = str(exc) or "out of memory; use a smaller --tile (e.g. 256) and --batch 1"
            return _fail(message, FAILURE, as_json)
        except (KeyboardInterrupt, PredictionCancelled):
            return _fail("interrupted; nothing was written", INTERRUPTED, as_json)
        except Exception as exc:
            if not as_json:
                raise
            traceback.print_exc()  # the whole story on stderr, one line for the program that reads stdout
            return _fail(f"{type(exc).__name__}: {exc}", FAILURE, as_json)


def emit(event: str, **fields) -> None:
    """One JSON line on stdout, flushed at once."""
    print(json.dumps({"event": event, **fields}), flush=True)


def _fail(message: str, code: int = FAILURE, as_json: bool = False) -> int:
    print(f"error: {message}", file=sys.stderr)
    if as_json:
        emit("error", message=message, code=code)
    return code


def _emit_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None, line=None
) -> None:
    """warnings.showwarning replacement for --progress json: a warning event and a plain line on stderr."""
    _print_warning(message, category, filename, lineno)
    emit("warning", message=str(message))


def _print_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None, line=None
) -> None:
    """warnings.showwarning replacement: one plain line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    """The `predict` command."""
    output = check_output_path(args.input, args.output, args.overwrite, args.format)
    use_physical_cores()
    volume = read_volume(args.input, args.series)
    device = resolve_device(args.device)
    model_path = args.model if args.model is not None else default_model_path()
    if model_path is None:
        raise NoModelError()
    model, card = load_model(model_path, device="cpu", allow_untrained=args.allow_untrained)
    if not card.trained:
        warnings.warn(
            f"{card.id} holds untrained weights: the output is not a super-resolved CT", stacklevel=1
        )
    options = PredictOptions(
        device=str(device),
        tile=args.tile,
        tile_overlap=args.overlap,
        depth_overlap=args.depth_overlap,
        batch=args.batch,
        amp=args.amp,
        cpu_bf16=args.cpu_bf16,
        depth_blend=args.depth_blend,
    )
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
        thin, affine, used, fallbacks = super_resolve_with_fallback(
            model,
            volume.array,
            volume.affine,
            options,
            on_fallback=partial(emit, "fallback") if as_json else _warn,
            progress=report,
            window=card.window,
            trained_spacing_mm=card.thick_spacing_mm,
        )
    seconds = time.perf_counter() - start
    thin_hu = to_int16_hu(thin)
    del thin
    _write_thin(args, output, thin_hu, affine, volume, card)
    k, j, i = thin_hu.shape
    spacing = voxel_spacing(affine)
    ran_on = describe_device(resolve_device(used.device))
    peak = peak_rss_bytes()
    if as_json:
        emit(
            "done",
            output=str(output),
            shape=[i, j, k],
            spacing_mm=[float(value) for value in spacing],
            seconds=seconds,
            device=ran_on,
            fallbacks=list(fallbacks),
            model=card.id,
            model_sha256=card.sha256,
            ratio=card.ratio,
            peak_rss_bytes=peak,
        )
        return 0
    print(f"wrote {output}: {i} x {j} x {k} voxels, spacing {' x '.join(f'{s:.3f}' for s in spacing)} mm")
    print(f"super-resolved {volume.array.shape[0]} -> {k} slices in {seconds:.1f} s on {ran_on}")
    if peak is not None:
        print(f"peak memory (resident): {peak / 2**30:.2f} GiB")
    return 0


def _write_thin(
    args: argparse.Namespace,
    output: Path,
    thin_hu: np.ndarray,
    affine: np.ndarray,
    volume: Volume,
    card: ModelCard,
) -> None:
    """Write the thin CT labelled synthetic (model id, weights sha256, input); a DICOM series goes into
    the input's study when the input was DICOM, else into a new anonymous one (and a warning says so)."""
    synthetic = {"model": card.id, "model_sha256": card.sha256, "source": Path(args.input).name}
    if volume.dicom is not None:
        synthetic["source_series_uid"] = volume.dicom.series_uid
    elif output_format(args.output, args.format) == "dicom":
        warnings.warn(
            f"the input is not DICOM, so the series in {output} is filed under a new anonymous patient and "
            "study; move it to the right patient in your DICOM tools if needed",
            stacklevel=1,
        )
    write_volume(
        args.output,  # as typed: a trailing '/' asks for a DICOM folder
        thin_hu,
        affine,
        overwrite=args.overwrite,
        input_path=args.input,
        compress=args.compress,
        synthetic=synthetic,
        out_format=args.format,
        dicom_source=volume.dicom,
    )


def _emit_progress(fraction: float, message: str) -> None:
    emit("progress", fraction=round(float(fraction), 6), message=message)


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
        fields = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": gpu, "reason": reason}
        emit("devices", line=line, cpu_threads=threads, **fields)
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
    rows = {}
    for variant in variants:
        with torch.device("meta"):  # shapes only: nothing is allocated
            rows[variant] = parameter_parts(TVSRN(TVSRNConfig.variant_defaults(variant)))
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


def _parts_table(rows: dict[str, dict[str, int]]) -> str:
    columns = [*PART_COLUMNS, *(["other"] if any("other" in row for row in rows.values()) else []), "total"]
    width = max(len("variant"), *(len(name) for name in rows))
    lines = [f"{'variant':<{width}}" + "".join(f"{column:>12}" for column in columns)]
    for name, row in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{row.get(column, 0):>12,}" for column in columns))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

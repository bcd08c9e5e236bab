"""The `volumetricsr` command: predict (super-resolve a CT file), summary (parameter counts), demo."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch
from torch import nn

from . import demo
from .allocator import peak_rss_bytes
from .cli_common import add_model_and_device_arguments, progress_bar, show_progress
from .device import DeviceError, describe_device, resolve_device
from .geometry import GeometryError, voxel_spacing
from .intensity import to_int16_hu
from .network import TVSRN, VARIANTS, TVSRNConfig
from .predictor import DEPTH_BLENDS, InputError, PredictionCancelled, PredictOptions, super_resolve_hu
from .volume_io import VolumeFileError, check_output_path, read_volume, write_volume
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="{predict,summary,demo}")

    predict = commands.add_parser(
        "predict",
        help="super-resolve a CT volume file",
        description="Read a thick CT (.nii, .nii.gz or .nrrd), super-resolve it along the slice axis and "
        "write the thin CT (int16 HU) in the format given by OUTPUT's extension.",
    )
    predict.add_argument("input", type=Path, help="thick CT volume (.nii, .nii.gz or .nrrd)")
    predict.add_argument("output", type=Path, help="thin CT to write (.nii, .nii.gz or .nrrd)")
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
    predict.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    predict.add_argument(
        "--allow-untrained", action="store_true", help="accept untrained weights (only to test the pipeline)"
    )
    predict.set_defaults(handler=run_predict)

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
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _print_warning
        try:
            return args.handler(args)
        except _USER_ERRORS as exc:
            return _fail(str(exc), BAD_INPUT)
        except torch.cuda.OutOfMemoryError:
            return _fail(
                "the GPU ran out of memory; use a smaller --tile (e.g. 256), --batch 1 or --device cpu"
            )
        except MemoryError:
            return _fail("out of memory; use a smaller --tile (e.g. 256) and --batch 1")
        except (KeyboardInterrupt, PredictionCancelled):
            return _fail("interrupted; nothing was written", INTERRUPTED)


def _fail(message: str, code: int = FAILURE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _print_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None, line=None
) -> None:
    """warnings.showwarning replacement: one plain line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    """The `predict` command."""
    output = check_output_path(args.input, args.output, args.overwrite)
    volume = read_volume(args.input)
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
    start = time.perf_counter()
    # disable=None: the bar shows on a terminal only, not in logs of batch runs
    with progress_bar(disable=None) as bar:
        thin, affine = super_resolve_hu(
            model,
            volume.array,
            volume.affine,
            options,
            progress=partial(show_progress, bar),
            window=card.window,
            trained_spacing_mm=card.thick_spacing_mm,
        )
    seconds = time.perf_counter() - start
    write_volume(output, to_int16_hu(thin), affine, overwrite=args.overwrite, input_path=args.input)
    k, j, i = thin.shape
    spacing = " x ".join(f"{s:.3f}" for s in voxel_spacing(affine))
    print(f"wrote {output}: {i} x {j} x {k} voxels, spacing {spacing} mm")
    slices = f"{volume.array.shape[0]} -> {k} slices"
    print(f"super-resolved {slices} in {seconds:.1f} s on {describe_device(device)}")
    peak = peak_rss_bytes()
    if peak is not None:
        print(f"peak memory (resident): {peak / 2**30:.2f} GiB")
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

"""The `demo` command: simulate a thick scan of a thin chest CT, super-resolve it, score it, show it.

The thin CT is the built-in synthetic chest phantom (or a real thin CT given with --input). Its
simulated thick scan (thick slice = mean of r thin slices, placed at their centre) goes through
the model and through cubic and linear interpolation; all three are scored against the thin
slices on the output grid with the paper's protocol (metrics.score_volume).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import phantom
from ..geometry import GeometryError, thin_grid, voxel_spacing
from ..inference.device import describe_device, resolve_device
from ..inference.interpolation import interpolate_slices
from ..inference.predictor import PredictOptions, super_resolve_hu
from ..intensity import to_int16_hu
from ..io.png import review_montage, write_png
from ..io.volume_io import VolumeFileError, read_volume, write_volume
from ..metrics import PROTOCOL_TRIM, score_volume
from ..models.weights import default_model_path
from .batch import Ranks
from .cli_common import add_model_and_device_arguments, progress_bar, show_progress
from .run import Engines, PredictRequest

DESCRIPTION = (
    "Simulate a 5 mm scan of a thin chest CT (a built-in synthetic phantom, or --input), super-resolve "
    "it with the model, and score the result, cubic and linear interpolation against the thin slices "
    "with the paper's protocol (PSNR, SSIM). Writes thick, truth, cubic and predicted volumes and a "
    "review image into --output-dir."
)
DEFAULT_OUTPUT_DIR = Path("demo_output")
DEFAULT_RATIO = 5
DEFAULT_THICK_MM = 5.0
VOLUME_FILES = {
    "thick": "thick.nii.gz",
    "truth": "truth.nii.gz",
    "cubic": "cubic.nii.gz",
    "prediction": "predicted.nii.gz",
}
REVIEW_FILE = "review.png"
NO_MODEL_MESSAGE = (
    "no trained model is bundled yet, so the demo shows the baselines only (cubic and linear "
    "interpolation); train one with `volumetricsr-train` and pass it with --model"
)


@dataclass
class DemoResult:
    """What the demo computed: scores per method, files written, and how the model ran."""

    scores: dict[str, dict[str, float]]
    files: dict[str, Path]
    ratio: int
    model_id: str | None = None
    device: str | None = None
    seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options."""
    parser.add_argument(
        "--input", type=Path, help="a real thin CT (.nii, .nii.gz or .nrrd) to use instead of the phantom"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help=f"folder for the result files (default: {DEFAULT_OUTPUT_DIR})",
    )
    add_model_and_device_arguments(parser)
    parser.add_argument(
        "--tile",
        type=int,
        help="in-plane tile size in pixels, to save memory; tiles overlap by 32 pixels or a quarter "
        "of the tile, whichever is less (default: whole slices)",
    )
    parser.add_argument("--batch", type=int, default=1, help="windows per network call (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace result files that exist")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the phantom's anatomy and noise (default: 0)"
    )


def run_demo_command(args: argparse.Namespace) -> int:
    """The `demo` command: run the demo and print its table; returns the exit code (0)."""
    bar: tqdm | None = None

    def report(fraction: float, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar()
        show_progress(bar, fraction, message)

    try:
        result = run_demo(
            args.output_dir,
            input_path=args.input,
            model=args.model,
            device=args.device,
            tile=args.tile,
            batch=args.batch,
            overwrite=args.overwrite,
            seed=args.seed,
            progress=report,
        )
    finally:
        if bar is not None:
            bar.close()
    print(format_report(result))
    return 0


def run_demo(
    output_dir: str | Path,
    *,
    input_path: str | Path | None = None,
    model: str | Path | None = None,
    device: str = "auto",
    tile: int | None = None,
    batch: int = 1,
    overwrite: bool = False,
    seed: int = 0,
    phantom_shape: tuple[int, int, int] = phantom.DEFAULT_SHAPE,
    progress: Callable[[float, str], None] | None = None,
) -> DemoResult:
    """Run the demo end to end and write its files into `output_dir`; returns the scores.

    `model` None means the bundled default model; without one only the baselines are run and
    written (nothing is presented as a model's output). Every check and computation runs before
    the first file is written.
    """
    out = Path(output_dir)
    notes: list[str] = []
    model_path = model if model is not None else default_model_path()
    engine = card = None
    if model_path is None:
        notes.append(NO_MODEL_MESSAGE)
    else:
        overlap = PredictOptions.tile_overlap if tile is None else min(PredictOptions.tile_overlap, tile // 4)
        options = PredictOptions(device=device, tile=tile, tile_overlap=overlap, batch=batch)
        request = PredictRequest(paths=(), model=str(model_path), predict=options)
        engine = Engines(request, Ranks()).engine(model_path)
        card = engine.card
    ratio = card.ratio if card else DEFAULT_RATIO
    thick_mm = (card.thick_spacing_mm if card else None) or DEFAULT_THICK_MM
    targets = _output_paths(out, with_prediction=card is not None, overwrite=overwrite)

    if input_path is not None:
        thin, thin_affine, source = _read_thin_ct(Path(input_path), ratio, thick_mm, notes)
        view_point = None
    else:
        thin, thin_affine = phantom.chest_phantom(phantom_shape, slice_mm=thick_mm / ratio, seed=seed)
        source = f"synthetic chest phantom, seed {seed} ({thick_mm / ratio:g} mm slices)"
        view_point = phantom.review_point(thin_affine, thin.shape)

    least = max(math.ceil(2 * PROTOCOL_TRIM / ratio) + 1, card.config.depth if card else 2)
    thick_float, thick_affine = _simulated_scan(thin, thin_affine, ratio, least, source)
    thick = to_int16_hu(thick_float)
    grid = thin_grid(thick_affine, thick.shape[0], ratio)
    truth = np.asarray(thin[phantom.truth_slices(thick.shape[0], ratio)])
    thick_spacing = float(voxel_spacing(thick_affine)[2])
    notes.insert(0, f"{source} -> {thick.shape[0]} simulated thick slices of {thick_spacing:g} mm, x{ratio}")
    results = {method: interpolate_slices(thick, ratio, method) for method in ("cubic", "linear")}
    seconds = None
    affines = {"thick": thick_affine}  # every other file lies on the thin grid
    if engine is not None:
        start = time.perf_counter()
        prediction, prediction_affine = super_resolve_hu(
            engine.model,
            thick,
            thick_affine,
            engine.options.predict,
            progress=progress,
            window=card.window,
            trained_spacing_mm=card.thick_spacing_mm,
        )
        seconds = time.perf_counter() - start
        affines["prediction"] = prediction_affine
        results = {"prediction": prediction, **results}
    scores = {name: score_volume(array, truth) for name, array in results.items()}

    rows = [(f"thick {thick_spacing:g} mm", thick, thick_affine), ("cubic", results["cubic"], grid.affine)]
    if card is not None:
        rows.append((f"TVSRN {card.id}", results["prediction"], grid.affine))
    rows.append((f"truth {thick_spacing / ratio:g} mm", truth, grid.affine))
    montage = review_montage(rows, world_point=view_point)

    arrays = {"thick": thick, "truth": to_int16_hu(truth), "cubic": to_int16_hu(results["cubic"])}
    if card is not None:
        arrays["prediction"] = to_int16_hu(results["prediction"])
    out.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        synthetic = {"model": card.id, "model_sha256": card.sha256} if name == "prediction" else None
        write_volume(
            targets[name], array, affines.get(name, grid.affine), overwrite=overwrite, synthetic=synthetic
        )
    write_png(targets["review"], montage, overwrite=overwrite)
    return DemoResult(
        scores=scores,
        files=targets,
        ratio=ratio,
        model_id=card.id if card else None,
        device=describe_device(resolve_device(engine.options.predict.device)) if engine else None,
        seconds=seconds,
        notes=notes,
    )


def format_report(result: DemoResult) -> str:
    """The demo's printed summary: notes, the score table, timing and the files written."""
    names = {"prediction": f"TVSRN ({result.model_id})", "cubic": "cubic B-spline", "linear": "linear"}
    width = max(len(names[name]) for name in result.scores)
    lines = [*result.notes, ""]
    lines.append(f"{'method':<{width}}  {'PSNR (dB)':>9}  {'SSIM':>6}")
    for name, score in result.scores.items():
        lines.append(f"{names[name]:<{width}}  {score['psnr']:>9.3f}  {score['ssim']:>6.4f}")
    lines.append(
        f"paper protocol: HU [-1024, 2048] -> [0, 1], first and last {PROTOCOL_TRIM} thin slices left out, "
        "PSNR over the volume, SSIM per axial slice"
    )
    if result.seconds is not None:
        lines.append(f"prediction took {result.seconds:.1f} s on {result.device}")
    lines.append("wrote " + ", ".join(str(path) for path in result.files.values()))
    return "\n".join(lines)


def _read_thin_ct(
    path: Path, ratio: int, thick_mm: float, notes: list[str]
) -> tuple[np.ndarray, np.ndarray, str]:
    """A real thin CT: (array, affine, description); notes when its slabs differ from the model's."""
    volume = read_volume(path)
    spacing = float(voxel_spacing(volume.affine)[2])
    if not np.isclose(spacing * ratio, thick_mm, rtol=0.05):
        notes.append(
            f"the input's {spacing:g} mm slices make {spacing * ratio:g} mm thick slices, not the "
            f"{thick_mm:g} mm the model expects: scores are not comparable with the paper's"
        )
    return np.asarray(volume.array), volume.affine, f"{path.name} ({spacing:g} mm slices)"


def _simulated_scan(
    thin: np.ndarray, affine: np.ndarray, ratio: int, least: int, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """phantom.simulate_thick, refusing volumes too short for `least` thick slices or an even ratio."""
    if thin.shape[0] // ratio < least:
        raise GeometryError(
            f"{source} has {thin.shape[0]} slices; the demo needs at least {least * ratio} to simulate "
            f"{least} thick slices of {ratio} (enough for the model and for scoring)"
        )
    try:
        return phantom.simulate_thick(thin, affine, ratio)
    except ValueError as error:
        raise GeometryError(f"cannot simulate a thick scan of {source}: {error}") from error


def _output_paths(out: Path, with_prediction: bool, overwrite: bool) -> dict[str, Path]:
    """The files the demo will write; refuses (before any work) to replace existing ones unless asked."""
    if out.exists() and not out.is_dir():
        raise VolumeFileError(f"the output folder {out} is a file; give a folder with --output-dir")
    names = {key: name for key, name in VOLUME_FILES.items() if with_prediction or key != "prediction"}
    paths = {key: out / name for key, name in names.items()}
    paths["review"] = out / REVIEW_FILE
    existing = [path.name for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise VolumeFileError(
            f"{out} already holds {', '.join(existing)}; choose another --output-dir or pass --overwrite"
        )
    return paths

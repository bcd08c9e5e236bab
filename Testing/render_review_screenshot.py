"""Render the README's review image through Slicer's own slice logic (slicer-core, no window).

The thick input is simulated from the real 1 mm chest CT in ../shared/data (LIDC-IDRI case 0314):
each 5 mm slice is the mean of five 1 mm slices, placed at their centre. The bottom row is the thin
output of a model (the bundled default one, or --model), or with --interpolation the geometry-correct
cubic slice interpolation, a stand-in to be named as such wherever the image is shown.

    .venv/bin/python Testing/render_review_screenshot.py --interpolation
    .venv/bin/python Testing/render_review_screenshot.py --model Resources/Models/<id>.json --device auto
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VolumetricSR"))

import slicer  # noqa: E402

from VolumetricSRLib.geometry import thin_grid  # noqa: E402
from VolumetricSRLib.inference.interpolation import interpolate_slices  # noqa: E402
from VolumetricSRLib.intensity import to_int16_hu  # noqa: E402
from VolumetricSRLib.io.volume_io import read_volume  # noqa: E402
from VolumetricSRLib.models.weights import ModelFileError  # noqa: E402
from VolumetricSRLib.phantom import simulate_thick  # noqa: E402
from VolumetricSRMRML.review_layout import apply_window_preset  # noqa: E402
from VolumetricSRMRML.review_render import HeadlessViews, render_review  # noqa: E402
from VolumetricSRMRML.volume_nodes import write_thin_volume  # noqa: E402

RATIO = 5
DEFAULT_INPUT = (
    REPO.parent / "shared" / "data" / "ct" / "LIDC-IDRI" / "LIDC-IDRI-0314_chest_1mm_slices100-274.nii.gz"
)
DEFAULT_OUTPUT = REPO / "Resources" / "Screenshots" / "review.png"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model file or bundled id (default: the bundled default model)")
    source.add_argument("--interpolation", action="store_true", help="cubic slice interpolation stand-in")
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="thin (1 mm) CT to simulate from")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="PNG to write (replaced)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--size", type=int, default=320, help="pixels per view side")
    parser.add_argument("--preset", default="lung", help="lung, mediastinum or bone window")
    return parser.parse_args(argv)


def thin_volume(args: argparse.Namespace, thick, thick_affine):
    """(thin HU, thin affine, what made it)."""
    if args.interpolation:
        return (
            interpolate_slices(thick, RATIO, "cubic"),
            thin_grid(thick_affine, thick.shape[0], RATIO).affine,
            ("cubic slice interpolation (stand-in)"),
        )
    from VolumetricSRLib.inference.predictor import PredictOptions, super_resolve_hu
    from VolumetricSRLib.models.weights import NoModelError, default_model_path, load_model

    reference = args.model or default_model_path()
    if reference is None:
        raise NoModelError(
            "no trained model is bundled: pass --model PATH, or --interpolation for the stand-in"
        )
    network, card = load_model(reference)
    thin, affine = super_resolve_hu(
        network,
        thick,
        thick_affine,
        PredictOptions(device=args.device),
        window=card.window,
        trained_spacing_mm=card.thick_spacing_mm,
    )
    return thin, affine, f"model {card.id}"


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    source = read_volume(args.input)
    thick, thick_affine = simulate_thick(source.array, source.affine, RATIO)
    try:
        thin, thin_affine, made_by = thin_volume(args, thick, thick_affine)
    except ModelFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    views = HeadlessViews(slicer.vtkMRMLScene())
    thick_node = write_thin_volume(
        views.scene, to_int16_hu(thick), thick_affine, name="thick (simulated 5 mm)"
    )
    thin_node = write_thin_volume(views.scene, to_int16_hu(thin), thin_affine, name="thin (1 mm)")
    apply_window_preset([thick_node, thin_node], args.preset)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    point, _ = render_review(
        views, thick_node, thin_node, args.output, size=(args.size, args.size), overwrite=True
    )
    print(
        f"{args.output}: top {thick.shape[0]} thick slices, bottom {thin.shape[0]} thin slices by {made_by}; "
        f"all views through RAS {point.round(1).tolist()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

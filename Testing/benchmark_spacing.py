"""Benchmark: the x5 model on 2.5 and 3 mm slices (`predict --spacing`) against cubic interpolation.

Thick scans are simulated from thin ones with a box slab as wide as the slice spacing (each thin
slice counts with the part of its own 1-slice-wide bin inside the slab), the first slab centred on
a thin slice, so that output slices MM apart land on real thin slices: the truth. The model runs
as `volumetricsr predict` does (study.super_resolve_study: its own grid, spacing / 5, then a cubic
B-spline to MM); the baseline is the same cubic B-spline straight from the thick slices. Scores:
the paper protocol (metrics.score_volume, the card's window, 5 slices trimmed at each end).

Cases: LIDC-IDRI 1 mm (a TRAINING volume of the bundled model: optimistic) at 2.5, 3 and 5 mm; the
held-out pulmonary crop (1.5 mm) at 2.5 mm (its slabs partial-weight the 1.5 mm slices; out on 1.5 mm,
every third slice of the model's 0.5 mm grid), 3 mm (2 x 1.5) and 7.5 mm (5 x 1.5, the model's own ratio); the
validation volume (3 mm) at 9 and 15 mm (x3 and x5 of its slices: where models are compared and chosen).

    .venv/bin/python Testing/benchmark_spacing.py [--model ID] [--crop 160] [--only TEXT] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VolumetricSR"))

from VolumetricSRLib.geometry import spaced_grid, voxel_spacing  # noqa: E402
from VolumetricSRLib.inference.predictor import PredictOptions  # noqa: E402
from VolumetricSRLib.inference.slice_resampling import resample_slices  # noqa: E402
from VolumetricSRLib.inference.study import StudyOptions, super_resolve_study  # noqa: E402
from VolumetricSRLib.io.volume_io import read_volume  # noqa: E402
from VolumetricSRLib.metrics import score_volume  # noqa: E402
from VolumetricSRLib.models.weights import default_model_path, load_model  # noqa: E402

CT = REPO.parent / "shared" / "data" / "ct"
CASES = (  # name, file, thick spacing, output spacing
    (  # 2.5 mm slices on a 1.5 mm truth: the model's own 0.5 mm grid lands on every truth slice (every 3rd)
        "pulmonary (held out) 2.5 mm -> 1.5 mm",
        "TotalSegmentator/pulmonary_report__models__ct_cropped.nii.gz",
        2.5,
        1.5,
    ),
    (
        "pulmonary (held out) 3 mm -> 1.5 mm",
        "TotalSegmentator/pulmonary_report__models__ct_cropped.nii.gz",
        3.0,
        1.5,
    ),
    (
        "pulmonary (held out) 7.5 mm -> 1.5 mm",
        "TotalSegmentator/pulmonary_report__models__ct_cropped.nii.gz",
        7.5,
        1.5,
    ),
    ("LIDC-IDRI (train) 2.5 mm -> 1 mm", "LIDC-IDRI/LIDC-IDRI-0314_chest_1mm_slices100-274.nii.gz", 2.5, 1.0),
    ("LIDC-IDRI (train) 3 mm -> 1 mm", "LIDC-IDRI/LIDC-IDRI-0314_chest_1mm_slices100-274.nii.gz", 3.0, 1.0),
    ("LIDC-IDRI (train) 5 mm -> 1 mm", "LIDC-IDRI/LIDC-IDRI-0314_chest_1mm_slices100-274.nii.gz", 5.0, 1.0),
    ("example_ct (validation) 9 mm -> 3 mm", "TotalSegmentator/example_ct.nii.gz", 9.0, 3.0),
    ("example_ct (validation) 15 mm -> 3 mm", "TotalSegmentator/example_ct.nii.gz", 15.0, 3.0),
)


def simulate_thick(
    thin: np.ndarray, thin_affine: np.ndarray, thick_mm: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Box slabs `thick_mm` wide and apart along axis 0: (thick HU float32, thick affine, index of the
    thin slice the first thick slice is centred on)."""
    step = thick_mm / float(voxel_spacing(thin_affine)[2])  # in thin slices
    first = math.ceil(step / 2 - 0.5)
    count = math.floor((thin.shape[0] - 0.5 - step / 2 - first) / step) + 1
    centres = first + step * np.arange(count)
    bins = np.arange(thin.shape[0], dtype=np.float64)
    low, high = centres[:, None] - step / 2, centres[:, None] + step / 2
    overlap = np.clip(np.minimum(bins + 0.5, high) - np.maximum(bins - 0.5, low), 0, None) / step
    thick = np.tensordot(overlap.astype(np.float32), thin.astype(np.float32), axes=(1, 0))
    affine = thin_affine.copy()
    affine[:3, 2] *= step
    affine[:3, 3] = (thin_affine @ [0, 0, first, 1])[:3]
    return thick, affine, first


def centre_crop(volume: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return volume
    rows, cols = volume.shape[1:]
    r0, c0 = max(0, (rows - size) // 2), max(0, (cols - size) // 2)
    return volume[:, r0 : r0 + size, c0 : c0 + size]


def run_case(model, card, path: Path, thick_mm: float, out_mm: float, crop: int | None, device: str) -> dict:
    volume = read_volume(path)
    thin = centre_crop(volume.array, crop).astype(np.float32)
    thick, thick_affine, first = simulate_thick(thin, volume.affine, thick_mm)
    grid = spaced_grid(thick_affine, thick.shape[0], out_mm)
    thin_mm = float(voxel_spacing(volume.affine)[2])
    truth_step = round(out_mm / thin_mm)
    truth = thin[first : first + truth_step * grid.slices : truth_step]
    start = time.perf_counter()
    options = StudyOptions(PredictOptions(device=device), spacing_mm=out_mm)
    study = super_resolve_study(model, card, thick, thick_affine, options)
    seconds = time.perf_counter() - start
    cubic = resample_slices(thick, np.arange(grid.slices) * out_mm / thick_mm)
    cubic = np.clip(np.rint(cubic), *card.window)
    return {
        "thick_slices": int(thick.shape[0]),
        "output_slices": int(grid.slices),
        "in_plane": list(thin.shape[1:]),
        "model": score_volume(study.hu, truth, card.window),
        "cubic": score_volume(cubic, truth, card.window),
        "consistency_mean_abs_hu": study.consistency.mean_abs_hu if study.consistency else None,
        "model_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file or bundled id (default: the bundled default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--crop", type=int, default=None, help="central in-plane crop (pixels) to save time")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    model, card = load_model(args.model or default_model_path(), device="cpu")
    results = {}
    for name, relative, thick_mm, out_mm in CASES:
        if args.only and args.only not in name:
            continue
        results[name] = run_case(model, card, CT / relative, thick_mm, out_mm, args.crop, args.device)
        row = results[name]
        print(
            f"{name:<40} model {row['model']['psnr']:.3f} dB / {row['model']['ssim']:.4f}   "
            f"cubic {row['cubic']['psnr']:.3f} dB / {row['cubic']['ssim']:.4f}   "
            f"({row['thick_slices']} -> {row['output_slices']} slices, {row['model_seconds']} s)",
            flush=True,
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"model": card.id, "crop": args.crop, "cases": results}, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: `predict --adapt` against the model as it is and cubic interpolation, on thick slices of
the model's own profile (box slabs) and of another (a Gaussian slab profile plus CT noise).

Thick slices are simulated from a thin volume on the model's own grid (x ratio of its slices): each
the mean of the thin slices under the slab profile (full width at half maximum = ratio slices)
centred on a thin slice, plus Gaussian noise; the truth is the thin slices. Scores: the paper
protocol (metrics.score_volume, the card's window, 5 slices trimmed at each end). Cases: the held-out
pulmonary crop (1.5 mm slices -> 7.5 mm) and the validation volume (3 mm -> 15 mm).

    .venv/bin/python Testing/benchmark_adapt.py [--model ID] [--steps 100] [--only TEXT] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VolumetricSR"))

from volumetricsr_training.pseudo_pairs import slab_weights  # noqa: E402
from VolumetricSRLib.geometry import voxel_spacing  # noqa: E402
from VolumetricSRLib.inference.adapt import AdaptOptions  # noqa: E402
from VolumetricSRLib.inference.predictor import PredictOptions  # noqa: E402
from VolumetricSRLib.inference.slice_resampling import resample_slices  # noqa: E402
from VolumetricSRLib.inference.study import StudyOptions, super_resolve_study  # noqa: E402
from VolumetricSRLib.io.volume_io import read_volume  # noqa: E402
from VolumetricSRLib.metrics import score_volume  # noqa: E402
from VolumetricSRLib.models.weights import default_model_path, load_model  # noqa: E402

CT = REPO.parent / "shared" / "data" / "ct"
VOLUMES = (
    ("pulmonary (held out)", "TotalSegmentator/pulmonary_report__models__ct_cropped.nii.gz"),
    ("example_ct (validation)", "TotalSegmentator/example_ct.nii.gz"),
)
PROFILES = (("box", 0.0), ("gaussian", 15.0))  # slab profile, noise (HU, standard deviation)


def simulate_thick(
    thin: np.ndarray, affine: np.ndarray, ratio: int, profile: str, noise_hu: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, int]:
    """(thick HU float32, thick affine, index of the thin slice the first thick slice is centred on)."""
    weights, margin = slab_weights(ratio, profile, float(ratio))
    half = margin + (ratio - 1) // 2
    count = (thin.shape[0] - 1 - 2 * half) // ratio + 1
    centres = half + ratio * np.arange(count)
    taps = np.arange(len(weights)) - half
    thick = np.tensordot(thin[centres[:, None] + taps[None, :]].astype(np.float32), weights, axes=(1, 0))
    thick = thick + np.random.default_rng(seed).normal(0.0, noise_hu, thick.shape).astype(np.float32)
    thick_affine = affine.copy()
    thick_affine[:3, 2] *= ratio
    thick_affine[:3, 3] = (affine @ [0, 0, half, 1])[:3]
    return thick.astype(np.float32), thick_affine, half


def run_case(model, card, path: Path, profile: str, noise_hu: float, steps: int, device: str) -> dict:
    volume = read_volume(path)
    ratio = card.ratio
    thick, thick_affine, first = simulate_thick(volume.array, volume.affine, ratio, profile, noise_hu)
    native_mm = float(voxel_spacing(volume.affine)[2])
    truth = volume.array[first : first + ratio * (thick.shape[0] - 1) + 1].astype(np.float32)
    row: dict = {"thick_slices": int(thick.shape[0]), "in_plane": list(thick.shape[1:])}
    for name, adapt in (("model", 0), ("adapted", steps)):
        options = StudyOptions(PredictOptions(device=device), spacing_mm=native_mm, adapt=AdaptOptions(adapt))
        start = time.perf_counter()
        study = super_resolve_study(model, card, thick, thick_affine, options)
        row[name] = score_volume(study.hu, truth, card.window)
        row[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        if study.adaptation is not None:
            row["adaptation"] = study.adaptation.line()
    cubic = resample_slices(thick, np.arange(truth.shape[0]) / ratio)
    row["cubic"] = score_volume(np.clip(np.rint(cubic), *card.window), truth, card.window)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file or bundled id (default: the bundled default)")
    parser.add_argument("--steps", type=int, default=100, help="adaptation steps (default: 100)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    model, card = load_model(args.model or default_model_path(), device="cpu")
    results = {}
    for volume_name, relative in VOLUMES:
        for profile, noise in PROFILES:
            name = f"{volume_name}, {profile}" + (f" + {noise:g} HU noise" if noise else "")
            if args.only and args.only not in name:
                continue
            row = run_case(model, card, CT / relative, profile, noise, args.steps, args.device)
            results[name] = row
            print(
                f"{name:<48} model {row['model']['psnr']:.3f} dB / {row['model']['ssim']:.4f}   "
                f"adapted {row['adapted']['psnr']:.3f} dB / {row['adapted']['ssim']:.4f}   "
                f"cubic {row['cubic']['psnr']:.3f} dB / {row['cubic']['ssim']:.4f}   "
                f"(model {row['model_seconds']} s, adapted {row['adapted_seconds']} s)\n"
                f"    {row['adaptation']}",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps({"model": card.id, "steps": args.steps, "cases": results}, indent=1))


if __name__ == "__main__":
    main()

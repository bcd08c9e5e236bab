"""Benchmark of the whole-volume predictor: several paths on one thick volume, in one run.

    python Testing/benchmark_predictor.py                       # synthetic 512 x 512 x 60 chest
    python Testing/benchmark_predictor.py --input CT.nii.gz --first 20 --slices 60 --spacing 5

Each path runs in its own child process (so that its peak memory is its own) on the same volume
with the same model: `reference` (the landed layers and defaults: float32, whole slices, batch 1,
freed memory handed back), `authors` (the authors' scheme: depth stride 2 keeping the central 10 of
16 thin slices, 256 x 256 tiles without overlap, later windows overwriting earlier ones), `default`
(today's defaults), `cpu-bf16` (where the CPU has native bfloat16) and, on a GPU, `gpu-fp32` and
`gpu-amp`. Prints one Markdown table and writes it with a JSON record into --out. Run by hand on a
quiet machine, never in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "VolumetricSR"))

from VolumetricSRLib.inference.allocator import peak_rss_bytes  # noqa: E402
from VolumetricSRLib.inference.device import cpu_model, describe_device, resolve_device, use_physical_cores  # noqa: E402
from VolumetricSRLib.inference.predictor import (  # noqa: E402
    PredictOptions,
    auto_batch,
    bf16_cpu_supported,
    plan_tiling,
    super_resolve_hu,
)
from VolumetricSRLib.io.volume_io import read_volume  # noqa: E402
from VolumetricSRLib.models.tvsrn import TVSRN, reference_layers  # noqa: E402
from VolumetricSRLib.models.weights import default_model_path, load_model  # noqa: E402
from VolumetricSRLib.phantom import chest_phantom, simulate_thick  # noqa: E402

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def path_options(name: str) -> PredictOptions:
    """The predictor options of each benchmarked path."""
    cpu = PredictOptions(device="cpu")
    paths = {
        "reference": replace(cpu, amp=False, reuse_memory=False),
        "authors": replace(cpu, tile=256, tile_overlap=0, depth_overlap=2, depth_blend="center"),
        "default": cpu,
        "cpu-bf16": replace(cpu, cpu_bf16=True),
        "gpu-fp32": PredictOptions(device="cuda", amp=False, batch=None),
        "gpu-amp": PredictOptions(device="cuda", batch=None),
    }
    return paths[name]


def available_paths() -> list[str]:
    """The paths this machine can run."""
    names = ["reference", "authors", "default"]
    if bf16_cpu_supported():
        names.append("cpu-bf16")
    if torch.cuda.is_available():
        names += ["gpu-fp32", "gpu-amp"]
    return names


def run_child(args: argparse.Namespace) -> None:
    """One path in this process: predict, save the thin HU volume and the figures."""
    data = np.load(args.volume)
    use_physical_cores()
    model, card = load_model(args.model or default_model_path(), device="cpu")
    options = path_options(args.child)
    reference = reference_layers(args.child == "reference")
    cuda = options.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with reference:
        thin, _ = super_resolve_hu(
            model, data["hu"], data["affine"], options, window=card.window, trained_spacing_mm=None
        )
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    np.save(args.output, thin)
    device = resolve_device(options.device)
    tile = plan_tiling(data["hu"].shape, card.config.depth, options)
    figures = {
        "seconds": seconds,
        "thin_slices": int(thin.shape[0]),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "device": describe_device(device),
        "options": asdict(options),
        "batch": options.batch or auto_batch(device, tile.tile_shape, options.amp),
        "pieces": len(tile.pieces),
        "tile_shape": list(tile.tile_shape),
    }
    Path(args.result).write_text(json.dumps(figures))


def window_gflop(model: TVSRN, tile_shape: tuple[int, int]) -> float:
    """Floating-point operations of one network call on one (D, h, w) window, in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta = TVSRN(model.cfg).eval()
        window = torch.zeros(1, model.cfg.depth, *tile_shape)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            meta(window)
    return counter.get_total_flops() / 1e9


def thick_volume(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """The benchmark input: (HU (K, J, I), affine, description)."""
    if args.input is None:
        thin, affine = chest_phantom((5 * args.slices, args.size, args.size), pixel_mm=0.7)
        thick, thick_affine = simulate_thick(thin, affine, 5)
        return thick, thick_affine, f"synthetic chest phantom, {args.size} x {args.size} x {args.slices}"
    volume = read_volume(args.input)
    hu = volume.array[args.first : args.first + args.slices]
    affine = volume.affine.copy()
    affine[:3, 3] = (affine @ np.array([0.0, 0.0, args.first, 1.0]))[:3]
    if args.spacing is not None:
        affine[:3, 2] *= args.spacing / np.linalg.norm(affine[:3, 2])
    shape = " x ".join(str(n) for n in hu.shape[::-1])
    label = f", labelled {args.spacing} mm" if args.spacing is not None else ""
    return hu, affine, f"{args.input.name} slices {args.first}-{args.first + len(hu) - 1} ({shape}){label}"


def machine() -> dict:
    """What the figures depend on."""
    flags: list[str] = []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = [flag for flag in CPU_FLAGS if flag in line.split()]
    return {
        "cpu": cpu_model(),
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def compare(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean and max absolute difference in HU, slab by slab (no full float64 copy)."""
    total, largest = 0.0, 0.0
    for z in range(0, reference.shape[0], 16):
        diff = np.abs(reference[z : z + 16] - other[z : z + 16])
        total += float(diff.sum(dtype=np.float64))
        largest = max(largest, float(diff.max()))
    return total / reference.size, largest


def run_parent(args: argparse.Namespace) -> None:
    names = args.paths.split(",") if args.paths else available_paths()
    hu, affine, description = thick_volume(args)
    model, card = load_model(args.model or default_model_path(), device="cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        volume = Path(scratch, "thick.npz")
        np.savez(volume, hu=hu, affine=affine)
        outputs = {}
        for name in names:
            result, output = Path(scratch, f"{name}.json"), Path(scratch, f"{name}.npy")
            command = [sys.executable, __file__, "--child", name, "--volume", str(volume)]
            command += ["--result", str(result), "--output", str(output)]
            command += ["--model", str(args.model)] if args.model else []
            print(f"running {name} ...", flush=True)
            subprocess.run(command, check=True)
            figures = json.loads(result.read_text())
            figures["gflop"] = window_gflop(model, tuple(figures["tile_shape"])) * figures["pieces"]
            outputs[name] = np.load(output, mmap_mode="r")
            if "reference" in outputs:
                figures["mean_hu"], figures["max_hu"] = compare(outputs["reference"], outputs[name])
            rows.append((name, figures))
            print(f"  {figures['seconds']:.1f} s", flush=True)
        reference_seconds = dict(rows).get("reference", {}).get("seconds")
        table = markdown_table(rows, reference_seconds)
        del outputs
    record = {
        "input": description,
        "model": card.id,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(sys.argv),
        "paths": dict(rows),
    }
    (args.out / "benchmark.json").write_text(json.dumps(record, indent=2))
    header = f"{description}; model {card.id}; {record['machine']['cpu']}, "
    header += f"{record['machine']['torch_threads']} threads, torch {record['machine']['torch']}"
    (args.out / "benchmark.md").write_text(header + "\n\n" + table + "\n")
    print(header + "\n\n" + table)


def markdown_table(rows: list[tuple[str, dict]], reference_seconds: float | None) -> str:
    lines = [
        "| path | s / volume | thin slices / s | GFLOP/s | peak RSS (GB) | peak GPU (GB) | speed-up "
        "| mean diff (HU) | max diff (HU) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in rows:
        speed_up = f"{reference_seconds / f['seconds']:.2f}x" if reference_seconds else "-"
        gpu = f"{f['peak_gpu_bytes'] / 1e9:.2f}" if f["peak_gpu_bytes"] is not None else "-"
        rss = f"{f['peak_rss_bytes'] / 1e9:.2f}" if f["peak_rss_bytes"] is not None else "-"
        diff = [f"{f[key]:.3f}" if key in f else "-" for key in ("mean_hu", "max_hu")]
        lines.append(
            f"| {name} | {f['seconds']:.1f} | {f['thin_slices'] / f['seconds']:.2f} | "
            f"{f['gflop'] / f['seconds']:.1f} | {rss} | {gpu} | {speed_up} | {diff[0]} | {diff[1]} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, help="thick CT file (default: the synthetic chest phantom)")
    parser.add_argument("--first", type=int, default=0, help="first slice of --input to use")
    parser.add_argument("--slices", type=int, default=60, help="thick slices (default: 60)")
    parser.add_argument("--spacing", type=float, help="label --input's slices with this spacing (mm)")
    parser.add_argument("--size", type=int, default=512, help="phantom in-plane size (default: 512)")
    parser.add_argument("--paths", help="comma-separated paths (default: all this machine runs)")
    parser.add_argument("--model", help="model file or bundled id (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"), help="folder for the table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()

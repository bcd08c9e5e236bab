"""Benchmark: what one training step costs (seconds, peak memory) per network size, crop and batch.

    .venv/bin/python Testing/benchmark_train_step.py                  # compact and paper size, 64-256 px
    .venv/bin/python Testing/benchmark_train_step.py --crops 256 --sizes paper --steps 3 --json out.json

A step is what the trainer does: forward on random thick crops (depth 4, x5), the paper's L1 loss
against random thin crops, backward and an AdamW update, in float32. Each case runs in its own child
process after one untimed warm-up step, so that its peak resident memory (RSS) is its own. Run by
hand on a quiet machine, never in CI; the table names the CPU and the threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "VolumetricSR"))

from VolumetricSRLib.inference.allocator import peak_rss_bytes  # noqa: E402
from VolumetricSRLib.inference.device import cpu_model  # noqa: E402
from VolumetricSRLib.models.thin_slice_network import count_parameters, l1_loss  # noqa: E402
from VolumetricSRLib.models.tvsrn import TVSRN, TVSRNConfig  # noqa: E402


def measure(size: str, crop: int, batch: int, steps: int) -> dict:
    """Seconds per step (mean over `steps` after a warm-up) and peak RSS of this process."""
    torch.manual_seed(0)
    network = TVSRN(TVSRNConfig.variant_defaults("full", size, output="residual"))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    cfg = network.cfg
    thick = torch.rand(batch, cfg.depth, crop, crop)
    thin = torch.rand(batch, cfg.thin_depth, crop, crop)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        l1_loss(network(thick), thin).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    peak = peak_rss_bytes()
    return {
        "size": size,
        "parameters": count_parameters(network),
        "crop": crop,
        "batch": batch,
        "seconds_per_step": round(seconds, 2),
        "peak_rss_gb": None if peak is None else round(peak / 1e9, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="compact,paper", help="comma-separated network sizes")
    parser.add_argument("--crops", default="64,128,256", help="comma-separated in-plane crop sizes")
    parser.add_argument("--batch", type=int, default=1, help="crops per step (the paper: 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, crop = args.child.split(":")
        print(json.dumps(measure(size, int(crop), args.batch, args.steps)))
        return
    rows = []
    for size in args.sizes.split(","):
        for crop in map(int, args.crops.split(",")):
            command = [sys.executable, __file__, "--child", f"{size}:{crop}"]
            command += ["--batch", str(args.batch), "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{size} {crop} x {crop}: {rows[-1]['seconds_per_step']} s / step", file=sys.stderr)
    print(
        f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}; thick crops of 4 slices (x5: 16 thin), batch {args.batch}\n"
    )
    print("| size | parameters | crop | s / step | peak RSS (GB) |\n| --- | ---: | --- | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['size']} | {row['parameters']:,} | 4 x {row['crop']} x {row['crop']} | "
            f"{row['seconds_per_step']} | {row['peak_rss_gb']} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

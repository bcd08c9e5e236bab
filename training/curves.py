"""The training log (log.csv): reading it, total training time, and a PNG of the curves."""

from __future__ import annotations

import csv
from pathlib import Path

from VolumetricSRLib.atomic import atomic_path

LOG_FIELDS = ("step", "loss", "linear_loss", "lr", "seconds", "val_psnr", "val_ssim")


def read_log(path: str | Path) -> list[dict[str, float]]:
    """Rows of log.csv as numbers (missing values left out of each row)."""
    with open(path, newline="") as handle:
        return [
            {key: float(value) for key, value in row.items() if key in LOG_FIELDS and value not in ("", None)}
            for row in csv.DictReader(handle)
        ]


def logged_seconds(rows: list[dict[str, float]]) -> float:
    """Training seconds recorded in a log, also one whose clock restarted at every resume.

    Logs written before the clock was kept across resumes restart `seconds` at each run segment;
    each drop starts a new segment, and the segments' last values are summed.
    """
    total, last = 0.0, 0.0
    for row in rows:
        seconds = row.get("seconds")
        if seconds is None:
            continue
        if seconds < last:
            total += last
        last = seconds
    return total + last


def plot_curves(log_path: str | Path, png_path: str | Path) -> Path | None:
    """Loss (model and linear interpolation), learning rate and validation PSNR / SSIM against step.

    Returns None (and draws nothing) when matplotlib is missing or the log has no rows yet.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_log(log_path)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_psnr" in r]
    if not train and not val:
        return None
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], label="model")
    axes[0].plot(steps, [r["linear_loss"] for r in train], label="linear interpolation", alpha=0.7)
    axes[0].set(xlabel="step", ylabel="L1 loss ([0, 1] scale)", title="training loss", yscale="log")
    axes[0].legend()
    axes[1].plot(steps, [r["lr"] for r in train])
    axes[1].set(xlabel="step", ylabel="learning rate", title="schedule")
    if val:
        axes[2].plot([r["step"] for r in val], [r["val_psnr"] for r in val], "o-", color="C2")
        axes[2].set(xlabel="step", ylabel="PSNR (dB)", title="validation (protocol)")
        ssim = axes[2].twinx()
        ssim.plot([r["step"] for r in val], [r["val_ssim"] for r in val], "s--", color="C3")
        ssim.set_ylabel("SSIM")
    else:
        axes[2].set(title="validation: none yet")
    png_path = Path(png_path)
    try:
        with atomic_path(png_path) as temporary:
            figure.savefig(temporary, format="png", dpi=90)
    finally:
        plt.close(figure)
    return png_path

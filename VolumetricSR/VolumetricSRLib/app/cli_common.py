"""What the `volumetricsr` commands that run a model share: the --model and --device options, the bar."""

from __future__ import annotations

import argparse

from tqdm import tqdm

_BAR_STEPS = 1000


def add_model_and_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--model (a model file or bundled id; default: the bundled model) and --device (default: auto)."""
    parser.add_argument(
        "--model",
        help="model file (.safetensors or .json) or id of a bundled model (default: the bundled one)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (GPU when usable), cuda or cpu (default: auto)"
    )


def progress_bar(**options) -> tqdm:
    """The "super-resolving" bar that `show_progress` moves; `options` go to tqdm (e.g. disable)."""
    return tqdm(
        total=_BAR_STEPS,
        desc="super-resolving",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}",  # postfix: ", message"
        **options,
    )


def show_progress(bar: tqdm, fraction: float, message: str) -> None:
    """Move `bar` to `fraction` (0 to 1) of the work and show `message` beside it."""
    bar.update(round(fraction * _BAR_STEPS) - bar.n)
    bar.set_postfix_str(message)

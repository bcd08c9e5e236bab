"""Shared test set-up: import paths, the real-CT folder beside the checkout, CPU threads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

sys.path.insert(0, str(REPO / "VolumetricSR"))
sys.path.insert(0, str(REPO))
torch.set_num_threads(2)


def shared_ct(relative: str) -> Path:
    """Path of a real CT under ../shared/data/ct, or skip the test with the reason."""
    path = SHARED_DATA / "ct" / relative
    if not path.exists():
        pytest.skip(f"real CT {relative} not found: ../shared/data is not beside this checkout")
    return path

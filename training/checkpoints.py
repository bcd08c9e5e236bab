"""Training checkpoints: reading them (weights only, nothing unpickled), the network they hold, and
the digest that says whether two networks hold the same weights. Used by the trainer, evaluation
and export alike, so that none of them imports another for it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from VolumetricSRLib.models.networks import build_network


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of a state_dict, in key order: equal digests mean equal weights."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A training checkpoint (weights only, nothing unpickled), config decoded, tensors on `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=device, weights_only=True)
    missing = {"model", "step", "config"} - set(state)
    if missing:
        raise ValueError(f"{path.name} is not a training checkpoint (missing {sorted(missing)})")
    state["config"] = json.loads(state["config"])
    return state


def network_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The trained network of a checkpoint (the architecture its config names), and the checkpoint."""
    state = read_checkpoint(path)
    network = build_network(state["config"]["model"])
    network.load_state_dict(state["model"])
    return network, state

"""Build the network a configuration describes: TVSRN (any variant) or one of the CNN baselines."""

from __future__ import annotations

from torch import nn

from .architectures import ModelConfig, config_from_dict
from .baseline_config import BaselineConfig
from .baselines import NETWORKS
from .network import TVSRN


def build_network(cfg: ModelConfig | dict) -> nn.Module:
    """A freshly initialised network for a config (or its dictionary, as in cards and checkpoints)."""
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    if isinstance(cfg, BaselineConfig):
        return NETWORKS[cfg.arch](cfg)
    return TVSRN(cfg)

"""Build the network a configuration describes, through the architecture registry."""

from __future__ import annotations

from torch import nn

from .architectures import REGISTRY, ModelConfig, arch_of, config_from_dict


def build_network(cfg: ModelConfig | dict) -> nn.Module:
    """A freshly initialised network for a config (or its dictionary, as in cards and checkpoints)."""
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    return REGISTRY[arch_of(cfg)].network_class()(cfg)

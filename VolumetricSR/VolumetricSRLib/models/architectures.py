"""The registry of network architectures (no torch: model cards are read without it).

An architecture is its name (the "arch" of a config dictionary), its label in reports, its config
class and where its network class lives ("module:Class", imported only when a network is built).
Registering one (`register`) is all it takes for model cards, checkpoints, export, `summary`, the
method table and the predictor to know it. A dictionary without "arch" is a TVSRN (every TVSRN model
card and checkpoint written before the baselines existed), and a TVSRN config is still written
without it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .baseline_config import ARCH_KEY, DAVSRConfig, MPUNetConfig, ResVoxConfig, SAINTConfig
from .network_config import TVSRNConfig

ModelConfig = TVSRNConfig | ResVoxConfig | MPUNetConfig | SAINTConfig | DAVSRConfig
TVSRN_ARCH = "tvsrn"


@dataclass(frozen=True)
class Architecture:
    """One network family: name, label, config class and network class ("module:Class")."""

    name: str
    label: str
    config: type
    network: str

    def network_class(self) -> type:
        """The network class (imports its module, and torch with it)."""
        module, _, name = self.network.partition(":")
        return getattr(importlib.import_module(module), name)


REGISTRY: dict[str, Architecture] = {}


def register(architecture: Architecture) -> Architecture:
    """Add an architecture; a second one of the same name is refused."""
    if architecture.name in REGISTRY:
        raise ValueError(f"the architecture {architecture.name!r} is registered already")
    REGISTRY[architecture.name] = architecture
    return architecture


register(Architecture(TVSRN_ARCH, "TVSRN", TVSRNConfig, f"{__package__}.tvsrn:TVSRN"))
for _config, _network in (
    (ResVoxConfig, "ResVox"),
    (MPUNetConfig, "MPUNet"),
    (SAINTConfig, "SAINT"),
    (DAVSRConfig, "DAVSR"),
):
    register(Architecture(_config.arch, _config.label, _config, f"{__package__}.cnn_baselines:{_network}"))


def arch_of(cfg: ModelConfig) -> str:
    """The architecture's name: "tvsrn" or a baseline's."""
    return next(name for name, architecture in REGISTRY.items() if isinstance(cfg, architecture.config))


def config_from_dict(data: dict) -> ModelConfig:
    """The configuration of the network a dictionary describes; ValueError names the choices."""
    if not isinstance(data, dict):
        raise ValueError(f"a network configuration is a table of settings, got {data!r}")
    arch = data.get(ARCH_KEY, TVSRN_ARCH)
    if arch not in REGISTRY:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {tuple(REGISTRY)}")
    if arch == TVSRN_ARCH:
        return TVSRNConfig.from_dict({key: value for key, value in data.items() if key != ARCH_KEY})
    return REGISTRY[arch].config.from_dict(data)


def label_of(cfg: ModelConfig) -> str:
    """How reports name the architecture: "TVSRN", "TVSRN no_tab" (an ablation variant), "MPU-Net", ..."""
    label = REGISTRY[arch_of(cfg)].label
    if isinstance(cfg, TVSRNConfig) and cfg.variant != "full":
        return f"{label} {cfg.variant}"
    return label

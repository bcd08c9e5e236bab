"""Which network a configuration dictionary describes (no torch: model cards are read without it).

A dictionary with "arch" names one of ARCHITECTURES; without it, it is a TVSRN (every TVSRN model card
and checkpoint written before the baselines existed), and a TVSRN config is still written without it.
"""

from __future__ import annotations

from .baseline_config import ARCH_KEY, BASELINES, BaselineConfig
from .network_config import TVSRNConfig

ModelConfig = TVSRNConfig | BaselineConfig
TVSRN_ARCH = "tvsrn"
ARCHITECTURES = (TVSRN_ARCH, *BASELINES)
LABELS = {TVSRN_ARCH: "TVSRN", **{name: config.label for name, config in BASELINES.items()}}


def arch_of(cfg: ModelConfig) -> str:
    """The architecture's name: "tvsrn" or a baseline's."""
    return cfg.arch if isinstance(cfg, BaselineConfig) else TVSRN_ARCH


def config_from_dict(data: dict) -> ModelConfig:
    """The configuration of the network a dictionary describes; ValueError names the choices."""
    if not isinstance(data, dict):
        raise ValueError(f"a network configuration is a table of settings, got {data!r}")
    arch = data.get(ARCH_KEY, TVSRN_ARCH)
    if arch == TVSRN_ARCH:
        return TVSRNConfig.from_dict({key: value for key, value in data.items() if key != ARCH_KEY})
    if arch not in BASELINES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    return BASELINES[arch].from_dict(data)


def label_of(cfg: ModelConfig) -> str:
    """How reports name the architecture: "TVSRN", "TVSRN no_tab" (an ablation variant), "MPU-Net", ..."""
    if isinstance(cfg, TVSRNConfig) and cfg.variant != "full":
        return f"{LABELS[TVSRN_ARCH]} {cfg.variant}"
    return LABELS[arch_of(cfg)]

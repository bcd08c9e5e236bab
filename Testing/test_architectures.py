"""The architecture registry: registering one network (config class, network class, label) is all it
takes for configs, model files, the predictor and the method labels to know it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from VolumetricSRLib.inference.predictor import PredictOptions, super_resolve_hu
from VolumetricSRLib.models.architectures import REGISTRY, Architecture, config_from_dict, label_of, register
from VolumetricSRLib.models.baseline_config import BaselineConfig
from VolumetricSRLib.models.networks import build_network
from VolumetricSRLib.models.thin_slice_network import ThinSliceNetwork
from VolumetricSRLib.models.weights import load_model, save_model
from VolumetricSRLib.phantom import chest_phantom, simulate_thick


@dataclass(frozen=True)
class ToyConfig(BaselineConfig):
    """A one-layer network, declared here and nowhere else."""

    arch: ClassVar[str] = "toy"
    label: ClassVar[str] = "Toy net"


class ToyNet(ThinSliceNetwork):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__(cfg)
        self.mix = nn.Conv2d(cfg.depth, cfg.thin_depth, 1)
        self.start_at_interpolation(self.mix)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)


@pytest.fixture
def toy():
    architecture = register(Architecture("toy", ToyConfig.label, ToyConfig, f"{__name__}:ToyNet"))
    yield architecture
    REGISTRY.pop("toy")


def test_a_registered_network_is_built_saved_loaded_and_run(toy, tmp_path: Path) -> None:
    cfg = config_from_dict({"arch": "toy", "output": "residual"})
    assert isinstance(cfg, ToyConfig) and label_of(cfg) == "Toy net"
    network = build_network(cfg)
    assert isinstance(network, ToyNet)
    card = save_model(network, tmp_path, id="toy", name="Toy", trained=False)
    loaded, read = load_model(card, allow_untrained=True)
    assert isinstance(loaded, ToyNet) and read.config == cfg
    thin, affine = chest_phantom((30, 24, 24), pixel_mm=1.5)
    thick, thick_affine = simulate_thick(thin, affine, 5)
    predicted, _ = super_resolve_hu(loaded, thick, thick_affine, PredictOptions(device="cpu"))
    assert predicted.shape == ((6 - 1) * 5 + 1, 24, 24) and np.isfinite(predicted).all()


def test_a_name_is_registered_once(toy) -> None:
    with pytest.raises(ValueError, match="'toy' is registered already"):
        register(toy)
    with pytest.raises(ValueError, match="unknown architecture 'toys'"):
        config_from_dict({"arch": "toys"})

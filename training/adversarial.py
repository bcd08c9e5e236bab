"""The adversarial loss of GAN-trained baselines (ResVoxGAN trains its generator against a 3D
discriminator): a small 3D patch discriminator of thin volumes and the non-saturating losses of both
players. Training only: the discriminator never reaches a model file."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from VolumetricSRLib.models.architectures import ModelConfig, label_of

WITHOUT_GAN = " without GAN"


def trained_label(network: ModelConfig, training: dict | None) -> str:
    """The architecture's label, saying when its training added the adversarial loss: "ResVox without
    GAN" becomes "ResVox-lite (GAN)" (our generator is smaller than ResVoxGAN's), any other network
    gets "+ adversarial loss"."""
    label = label_of(network)
    if not training or float(training.get("adversarial_weight", 0.0)) <= 0:
        return label
    if label.endswith(WITHOUT_GAN):
        return label.removesuffix(WITHOUT_GAN) + "-lite (GAN)"
    return f"{label} + adversarial loss"


class PatchDiscriminator3d(nn.Module):
    """Real-or-made logits for overlapping 3D patches of a thin volume (B, D', H, W): strided 3D
    convolutions, halving the in-plane size twice and the depth once."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [1, width, 2 * width, 4 * width]
        strides = [(1, 1, 1), (1, 2, 2), (2, 2, 2)]
        for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides, strict=True):
            layers += [nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv3d(channels[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, thin: torch.Tensor) -> torch.Tensor:
        return self.net(thin[:, None])


def generator_loss(discriminator: nn.Module, made: torch.Tensor) -> torch.Tensor:
    """The made volume scored as real: what the generator minimises besides its L1 loss."""
    logits = discriminator(made)
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def discriminator_loss(discriminator: nn.Module, made: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Real volumes scored as real and made ones (detached) as made."""
    real_logits, made_logits = discriminator(real), discriminator(made.detach())
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(made_logits, torch.zeros_like(made_logits))

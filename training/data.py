"""Training data: in-memory thin volumes and random pseudo-pair crops.

Every sampler draws a batch from a generator seeded with (seed, rank, step) only, so a resumed
run replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from VolumetricSRLib.intensity import HU_MAX, HU_MIN, hu_to_unit
from VolumetricSRLib.io.volume_io import read_volume

from .pseudo_pairs import SlabAugmentation, first_matching_thin_slice, simulate_thick_slices, slab_profile

BODY_HU = -900.0
BODY_LEVEL = float(hu_to_unit(np.array([BODY_HU]))[0])
CROP_TRIES = 20


@dataclass
class ThinVolume:
    """One thin CT volume on the [0, 1] scale, possibly downsampled in-plane."""

    name: str
    unit: np.ndarray
    scale: int


def downsample_inplane(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor pixel blocks (rows and columns beyond a whole block are dropped)."""
    if factor == 1:
        return volume
    k, j, i = volume.shape
    j2, i2 = j // factor * factor, i // factor * factor
    blocks = volume[:, :j2, :i2].reshape(k, j2 // factor, factor, i2 // factor, factor)
    return blocks.mean(axis=(2, 4), dtype=np.float32)


def load_thin_volumes(paths: list[str], scales: list[int]) -> list[list[ThinVolume]]:
    """Read each volume once and keep it in memory at every in-plane scale."""
    volumes = []
    for path in paths:
        unit = hu_to_unit(read_volume(Path(path)).array)
        volumes.append(
            [
                ThinVolume(Path(path).name, np.ascontiguousarray(downsample_inplane(unit, s)), s)
                for s in scales
            ]
        )
    return volumes


def inplane_views(volume: ThinVolume) -> list[ThinVolume]:
    """The volume with each in-plane axis as the slice axis: (J, K, I) and (I, K, J) copies of a
    (K, J, I) volume. Slabs along an in-plane axis (0.6-1 mm pixels) make pseudo pairs at the finest
    scale the scan has, with its own noise and kernel (self-supervision as in SMORE and SR4ZCT)."""
    rows = np.ascontiguousarray(volume.unit.transpose(1, 0, 2))
    columns = np.ascontiguousarray(volume.unit.transpose(2, 0, 1))
    return [
        ThinVolume(f"{volume.name} (rows as slices)", rows, volume.scale),
        ThinVolume(f"{volume.name} (columns as slices)", columns, volume.scale),
    ]


class PairSampler(ABC):
    """What every sampler shares: batches keyed by (seed, rank, step), body check, flips."""

    flip: bool
    min_body: float

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One pair: thick (D, h, w) and thin ((D - 1) r + 1, h, w), float32 on [0, 1]."""

    def batch(self, seed: int, rank: int, step: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """A batch that depends only on (seed, rank, step): resuming replays the same data."""
        rng = np.random.default_rng([seed, rank, step])
        pairs = [self.sample(rng) for _ in range(size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def has_body(self, block: np.ndarray) -> bool:
        """Enough voxels above air for the crop to teach anatomy."""
        return bool((block > BODY_LEVEL).mean() >= self.min_body)

    def finish(
        self, rng: np.random.Generator, thick: np.ndarray, thin: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random horizontal (left-right) flip of both crops, as contiguous arrays."""
        if self.flip and rng.random() < 0.5:
            thick, thin = thick[:, :, ::-1], thin[:, :, ::-1]
        return np.ascontiguousarray(thick), np.ascontiguousarray(thin)


class PseudoPairSampler(PairSampler):
    """Random (simulated thick crop, thin target) pairs from thin-only volumes."""

    def __init__(
        self,
        volumes: list[list[ThinVolume]],
        weights: list[float],
        ratio: int,
        crop: tuple[int, int, int],
        slab: str = "box",
        noise_hu: float = 0.0,
        flip: bool = True,
        min_body_fraction: float = 0.2,
        inplane_pairs: float = 0.0,
        augment: SlabAugmentation | None = None,
    ) -> None:
        """`inplane_pairs`: the share of pairs drawn with an in-plane axis of a volume (at full
        resolution) as the slice axis (inplane_views); `augment`: a slab profile and width drawn per
        pair instead of `slab`. Either off draws no extra random number (earlier runs replay alike)."""
        if not 0.0 <= inplane_pairs <= 1.0:
            raise ValueError(f"inplane_pairs is a share between 0 and 1, got {inplane_pairs}")
        self.volumes = volumes
        self.inplane = inplane_pairs
        self.views = [inplane_views(group[0]) for group in volumes] if inplane_pairs else []
        w = np.asarray(weights or [1.0] * len(volumes), dtype=np.float64)
        self.weights = w / w.sum()
        self.ratio = ratio
        self.depth, self.height, self.width = crop
        slab_profile(ratio, slab)  # refuses an unknown profile now, not at the first batch
        self.slab = slab
        self.noise = noise_hu / (HU_MAX - HU_MIN)
        self.flip = flip
        self.min_body = min_body_fraction
        self.offset = first_matching_thin_slice(ratio)
        self.augment = augment
        self.margin = augment.margin(ratio) if augment is not None else 0
        span = self.depth * ratio + 2 * self.margin
        for volume in [scaled for group in volumes for scaled in group] + [
            v for pair in self.views for v in pair
        ]:
            shape = volume.unit.shape
            if shape[0] < span or shape[1] < self.height or shape[2] < self.width:
                raise ValueError(
                    f"{volume.name} (in-plane scale 1/{volume.scale}): {shape} voxels is smaller than one "
                    f"crop ({span} thin slices x {self.height} x {self.width}); use a smaller crop"
                )

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        r, d = self.ratio, self.depth
        choice = rng.choice(len(self.volumes), p=self.weights)
        if self.inplane and rng.random() < self.inplane:
            vol = self.views[choice][rng.integers(2)].unit
        else:
            group = self.volumes[choice]
            vol = group[rng.integers(len(group))].unit
        span, m = d * r + 2 * self.margin, self.margin
        for _ in range(CROP_TRIES):
            z = rng.integers(0, vol.shape[0] - span + 1)
            y = rng.integers(0, vol.shape[1] - self.height + 1)
            x = rng.integers(0, vol.shape[2] - self.width + 1)
            block = vol[z : z + span, y : y + self.height, x : x + self.width]
            if self.has_body(block[m : m + d * r]):
                break
        if self.augment is not None:
            thick = self.augment.thick_slices(block, r, d, rng)
        else:
            thick = simulate_thick_slices(block, r, self.slab)
        thin = block[m + self.offset : m + self.offset + (d - 1) * r + 1]
        if self.noise:
            thick = thick + rng.normal(0.0, self.noise, thick.shape).astype(np.float32)
        return self.finish(rng, thick, thin)

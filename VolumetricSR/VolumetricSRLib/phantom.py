"""A deterministic synthetic chest CT, and the simulated thick scan of a thin volume.

The phantom is drawn in world millimetres (RAS: +x patient right, +y anterior, +z superior) on an
axial grid whose voxel (i, j, k) lies at x = -p i + c_x, y = -p j + c_y, z = s k: columns run from
the patient's right to left and rows from anterior to posterior, as in a radiological display.
Large anatomy (body, lungs, heart, ribs, spine) scales with the field of view and the slab height,
so every shape holds a whole chest section; nodules keep their true size in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .checks import odd_ratio

TISSUE_HU = {
    "air": -1000.0,
    "lung": -850.0,
    "ground_glass": -550.0,
    "fat": -100.0,
    "soft_tissue": 40.0,
    "liver": 60.0,
    "csf": 15.0,
    "disc": 85.0,
    "cancellous_bone": 350.0,
    "rib": 700.0,
    "cortical_bone": 1000.0,
}
NODULE_DIAMETERS_MM = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
DEFAULT_SHAPE = (101, 224, 224)
NOISE_HU = 20.0
_REFERENCE_HALF_FOV_MM = 168.0  # anatomy below is drawn for a 336 mm field of view, then scaled
_RIB_COUNT = 6
_VERTEBRA_COUNT = 4


@dataclass(frozen=True)
class _Grid:
    """World coordinates (mm) of the voxel centres along each axis, and the anatomy scale."""

    x: np.ndarray  # (I,)
    y: np.ndarray  # (J,)
    z: np.ndarray  # (K,)
    t: np.ndarray  # (K,) height fraction 0 (inferior) ... 1 (superior)
    scale: float  # in-plane millimetres per reference millimetre
    height: float  # slab height in mm

    def plane(self) -> tuple[np.ndarray, np.ndarray]:
        """Reference-scale in-plane coordinates X, Y, shaped (1, J, I)."""
        return (self.x / self.scale)[None, None, :], (self.y / self.scale)[None, :, None]

    def world(self, x_ref: float, y_ref: float, t: float) -> np.ndarray:
        """World point (x, y, z) of reference in-plane coordinates at height fraction t."""
        return np.array([x_ref * self.scale, y_ref * self.scale, self.z[0] + t * self.height])


def chest_phantom(
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    slice_mm: float = 1.0,
    pixel_mm: float = 1.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic chest CT: (HU int16 array (K, J, I), RAS affine 4 x 4). Same seed, same volume.

    Body with a fat layer; lungs whose outline changes along z, carved by the heart, aorta, spine
    and diaphragm domes; trachea, main bronchi and branching bronchi and vessels (the seed draws
    their branches); ribs sloping along z; vertebrae with discs; nodules of NODULE_DIAMETERS_MM
    (the seed places them; the 3-5 mm ones nearly vanish in 5 mm slabs). Edges are blurred by a
    Gaussian of 0.6 voxel and NOISE_HU of Gaussian noise is added.
    """
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"the phantom needs a (K, J, I) shape with at least 2 voxels per axis, got {shape}")
    k, j, i = (int(n) for n in shape)
    if slice_mm <= 0 or pixel_mm <= 0:
        raise ValueError(f"spacings must be positive, got slice {slice_mm} mm and pixel {pixel_mm} mm")
    affine = np.diag([-pixel_mm, -pixel_mm, slice_mm, 1.0])
    affine[:2, 3] = pixel_mm * (np.array([i, j]) - 1) / 2.0
    grid = _Grid(
        x=affine[0, 0] * np.arange(i) + affine[0, 3],
        y=affine[1, 1] * np.arange(j) + affine[1, 3],
        z=slice_mm * np.arange(k, dtype=np.float64),
        t=np.linspace(0.0, 1.0, k),
        scale=pixel_mm * min(i, j) / 2.0 / _REFERENCE_HALF_FOV_MM,
        height=slice_mm * (k - 1),
    )
    rng = np.random.default_rng(seed)
    hu = np.full((k, j, i), TISSUE_HU["air"], dtype=np.float32)
    lungs = _draw_torso(hu, grid)
    _draw_spine(hu, grid)
    _draw_ribs(hu, grid)
    _draw_airways_and_vessels(hu, grid, lungs, rng)
    _draw_nodules(hu, grid, lungs, rng)
    hu = ndimage.gaussian_filter(hu, sigma=0.6)
    hu += NOISE_HU * rng.standard_normal(hu.shape, dtype=np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), affine


def review_point(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World point (mm) at mid-height in the right lung of a phantom: a good place to look."""
    k, j, i = shape
    centre = np.asarray(affine, dtype=np.float64) @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0])
    scale = float(np.linalg.norm(np.asarray(affine)[:3, 0])) * min(i, j) / 2.0 / _REFERENCE_HALF_FOV_MM
    return centre[:3] + np.array([75.0 * scale, -5.0 * scale, 0.0])


def simulate_thick(thin: np.ndarray, thin_affine: np.ndarray, ratio: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulated thick scan of a thin (K, J, I) volume: (thick float32 (K // r, J, I), thick affine).

    Thick slice k is the mean of thin slices r k ... r k + r - 1 and lies in world space at their
    centre, thin slice r k + (r - 1) / 2; trailing thin slices that fill no whole slab are dropped.
    The in-plane grid is unchanged. `truth_slices` gives the thin slices on the thick scan's thin grid.
    """
    thin = np.asarray(thin)
    r = odd_ratio(ratio)
    if thin.ndim != 3:
        raise ValueError(f"the thin volume must be (K, J, I), got shape {thin.shape}")
    count = thin.shape[0] // r
    if count < 2:
        raise ValueError(
            f"{thin.shape[0]} thin slices make fewer than 2 thick slices of {r}; give at least {2 * r}"
        )
    slabs = thin[: count * r].astype(np.float32).reshape(count, r, *thin.shape[1:])
    thick = slabs.mean(axis=1, dtype=np.float64).astype(np.float32)
    thin_affine = np.asarray(thin_affine, dtype=np.float64)
    thick_affine = thin_affine.copy()
    thick_affine[:3, 2] = thin_affine[:3, 2] * r
    thick_affine[:3, 3] = thin_affine[:3, :3] @ np.array([0.0, 0.0, (r - 1) / 2.0]) + thin_affine[:3, 3]
    return thick, thick_affine


def truth_slices(thick_slices: int, ratio: int) -> slice:
    """Thin slices of the source volume lying on the thin grid of its simulated thick scan.

    Thick slice k sits on thin slice r k + (r - 1) / 2, so the thin grid of K thick slices is
    thin slices (r - 1) / 2 ... (r - 1) / 2 + (K - 1) r.
    """
    r = odd_ratio(ratio)
    start = (r - 1) // 2
    return slice(start, start + (thick_slices - 1) * r + 1)


def _fill(hu: np.ndarray, mask: np.ndarray, value: float) -> None:
    hu[np.broadcast_to(mask, hu.shape)] = value


def _ellipse(x: np.ndarray, y: np.ndarray, cx, cy, ax, ay, power: float = 2.0) -> np.ndarray:
    return np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power < 1.0


def _draw_torso(hu: np.ndarray, grid: _Grid) -> np.ndarray:
    """Body, fat layer, mediastinum, heart, aorta, diaphragm domes and lungs; returns the lung mask."""
    x, y = grid.plane()
    t = grid.t[:, None, None]
    body_a, body_b = 158.0 - 6.0 * t, 112.0 - 4.0 * t
    _fill(hu, _ellipse(x, y, 0, 0, body_a, body_b), TISSUE_HU["fat"])
    _fill(hu, _ellipse(x, y, 0, 0, body_a - 14, body_b - 14), TISSUE_HU["soft_tissue"])
    heart_size = np.sqrt(np.clip(1.0 - (t / 0.55) ** 2, 0.0, None))
    heart = _ellipse(x, y, -28, 28, 64 * heart_size + 1e-6, 50 * heart_size + 1e-6)
    domes = (((x - 70) / 75) ** 2 + ((y + 5) / 95) ** 2 + ((t + 0.25) / 0.42) ** 2 < 1.0) | (
        ((x + 70) / 70) ** 2 + ((y + 5) / 90) ** 2 + ((t + 0.32) / 0.42) ** 2 < 1.0
    )
    lungs = np.zeros(hu.shape, dtype=bool)
    for side in (1.0, -1.0):
        width = (52.0 - 6.0 * (side < 0)) * (1.0 - 0.3 * t**2)
        lungs |= _ellipse(x, y, side * (72 + 12 * t), -5, width, 80 * (1.0 - 0.25 * t**2), power=2.4)
    lungs &= _ellipse(x, y, 0, 0, body_a - 28, body_b - 28)
    lungs &= ~heart & ~domes & ~_ellipse(x, y, 0, -60, 24, 30)
    _fill(hu, domes & _ellipse(x, y, 0, 0, body_a - 14, body_b - 14), TISSUE_HU["liver"])
    mediastinal_fat = _ellipse(x, y, 0, 42, 28, 22) & (t > 0.35)
    _fill(hu, mediastinal_fat, TISSUE_HU["fat"])
    _fill(hu, _ellipse(x, y, -22, -38, 15, 15) & ~lungs, TISSUE_HU["fat"])
    _fill(hu, _ellipse(x, y, -22, -38, 11, 11), TISSUE_HU["soft_tissue"])  # descending aorta
    _fill(hu, _ellipse(x, y, -4, 24, 14, 14) & (t > 0.55), TISSUE_HU["soft_tissue"])  # ascending aorta
    _fill(hu, lungs, TISSUE_HU["lung"])
    return lungs


def _draw_spine(hu: np.ndarray, grid: _Grid) -> None:
    """Vertebral bodies (cortical rim, cancellous core) with discs, canal, arch and spinous process."""
    x, y = grid.plane()
    phase = (grid.t[:, None, None] * _VERTEBRA_COUNT + 0.3) % 1.0
    disc = phase < 0.2
    radius = np.hypot(x, y + 55)
    _fill(hu, radius < 17, TISSUE_HU["cortical_bone"])
    _fill(hu, (radius < 14) & ~disc, TISSUE_HU["cancellous_bone"])
    _fill(hu, (radius < 17) & disc, TISSUE_HU["disc"])
    canal = np.hypot(x, y + 82)
    _fill(hu, (canal >= 8) & (canal < 12.5), TISSUE_HU["rib"])
    _fill(hu, canal < 8, TISSUE_HU["csf"])
    _fill(hu, (np.abs(x) < 4) & (y < -92) & (y > -104), TISSUE_HU["rib"])
    _fill(hu, (np.abs(x) < 12) & (np.abs(y - 95) < 5), TISSUE_HU["rib"])  # sternum


def _draw_ribs(hu: np.ndarray, grid: _Grid) -> None:
    """Ribs: ring segments in the chest wall that slope down from the spine to the front."""
    x, y = grid.plane()
    t = grid.t[:, None, None]
    ring_a, ring_b = 158.0 - 6.0 * t - 22.0, 112.0 - 4.0 * t - 22.0
    radial_mm = (np.sqrt((x / ring_a) ** 2 + (y / ring_b) ** 2) - 1.0) * (ring_a + ring_b) / 2.0 * grid.scale
    angle = np.arctan2(y, x)
    beside_spine = np.abs(np.sin(angle) + 1.0) < 0.12
    beside_sternum = np.abs(np.sin(angle) - 1.0) < 0.25
    drop_mm = 0.3 * grid.height * (1.0 + np.sin(angle)) / 2.0
    z = grid.z[:, None, None]
    in_wall = (np.abs(radial_mm) < 5.0 * grid.scale) & ~beside_spine & ~beside_sternum
    for rib in range(_RIB_COUNT):
        top = grid.z[0] + grid.height * (0.12 + 1.1 * rib / (_RIB_COUNT - 1))
        _fill(hu, in_wall & (np.abs(z - (top - drop_mm)) < 4.5), TISSUE_HU["rib"])


def _draw_airways_and_vessels(
    hu: np.ndarray, grid: _Grid, lungs: np.ndarray, rng: np.random.Generator
) -> None:
    """Trachea, main bronchi, and trees of bronchi and vessels branching out from each hilum."""
    x, y = grid.plane()
    s = grid.scale
    above_carina = grid.t[:, None, None] >= 0.6
    _fill(hu, _ellipse(x, y, 0, -22, 11, 11) & above_carina, TISSUE_HU["soft_tissue"])
    _fill(hu, _ellipse(x, y, 0, -22, 8.5, 8.5) & above_carina, TISSUE_HU["air"])
    carina = grid.world(0, -22, 0.6)
    for side in (1.0, -1.0):
        hilum = grid.world(side * 44, -12, 0.45)
        _draw_tube(hu, grid, carina, hilum, 8.5 * s, TISSUE_HU["soft_tissue"])
        _draw_tube(hu, grid, carina, hilum, 6.0 * s, TISSUE_HU["air"])
        for direction in _LOBE_DIRECTIONS:
            root = np.array([side * direction[0], *direction[1:]])
            for start, end, radius in _branching_tree(
                rng, grid.world(side * 40, 0, 0.5), root, 26 * s, 4 * s, 6
            ):
                _draw_tube(hu, grid, start, end, radius, TISSUE_HU["soft_tissue"], inside=lungs)
        for direction in _LOBE_DIRECTIONS[::2]:
            root = np.array([side * direction[0], *direction[1:]])
            for start, end, radius in _branching_tree(rng, hilum, root, 24 * s, 3.5 * s, 4):
                _draw_tube(hu, grid, start, end, radius + 1.2 * s, TISSUE_HU["soft_tissue"], inside=lungs)
                _draw_tube(hu, grid, start, end, radius, TISSUE_HU["air"], inside=lungs)


_LOBE_DIRECTIONS = ((0.5, 0.0, 1.0), (1.0, 0.6, 0.2), (1.0, 0.0, 0.0), (1.0, -0.6, -0.2), (0.5, 0.0, -1.0))


def _branching_tree(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
    levels: int,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments (start, end, radius) of a random binary tree growing along `direction` (world mm)."""
    direction = direction / np.linalg.norm(direction)
    end = start + length * direction
    segments = [(start, end, radius)]
    if levels > 1:
        across = np.cross(direction, rng.normal(size=3))
        across /= np.linalg.norm(across)
        for sign in (1.0, -1.0):
            child = direction + sign * rng.uniform(0.4, 0.8) * across + rng.normal(0.0, 0.1, 3)
            segments += _branching_tree(
                rng, end, child, rng.uniform(0.7, 0.85) * length, 0.75 * radius, levels - 1
            )
    return segments


def _draw_tube(
    hu: np.ndarray,
    grid: _Grid,
    start: np.ndarray,
    end: np.ndarray,
    radius: float,
    value: float,
    inside: np.ndarray | None = None,
) -> None:
    """Set voxels within `radius` mm of the segment start-end (world mm) to `value`, in its bounding box."""
    low, high = np.minimum(start, end) - radius, np.maximum(start, end) + radius
    box = tuple(_index_range(axis, low[n], high[n]) for n, axis in ((2, grid.z), (1, grid.y), (0, grid.x)))
    if any(b.start >= b.stop for b in box):
        return
    points = np.stack(
        np.broadcast_arrays(
            grid.x[box[2]][None, None, :], grid.y[box[1]][None, :, None], grid.z[box[0]][:, None, None]
        ),
        axis=-1,
    )
    axis = end - start
    along = np.clip(((points - start) @ axis) / max(float(axis @ axis), 1e-12), 0.0, 1.0)
    distance = np.linalg.norm(points - start - along[..., None] * axis, axis=-1)
    hit = distance <= radius
    if inside is not None:
        hit &= inside[box]
    hu[box][hit] = value


def _index_range(coords: np.ndarray, low: float, high: float) -> slice:
    """Indices of the (monotonic) coordinates within [low, high], as a slice."""
    found = np.flatnonzero((coords >= low) & (coords <= high))
    return slice(int(found[0]), int(found[-1]) + 1) if found.size else slice(0, 0)


def _draw_nodules(hu: np.ndarray, grid: _Grid, lungs: np.ndarray, rng: np.random.Generator) -> None:
    """Spherical nodules of NODULE_DIAMETERS_MM (the largest ground glass) wholly inside the lungs.

    A nodule that finds no room in 200 tries (lungs of a very small phantom) is left out.
    """
    candidates = np.flatnonzero(lungs)
    if candidates.size == 0:
        return
    for diameter in NODULE_DIAMETERS_MM:
        radius = diameter / 2.0
        value = (
            TISSUE_HU["ground_glass"] if diameter == max(NODULE_DIAMETERS_MM) else TISSUE_HU["soft_tissue"]
        )
        for _ in range(200):
            k, j, i = np.unravel_index(rng.choice(candidates), lungs.shape)
            centre = np.array([grid.x[i], grid.y[j], grid.z[k]])
            margin = radius + 3.0
            box = tuple(
                _index_range(axis, centre[n] - margin, centre[n] + margin)
                for n, axis in ((2, grid.z), (1, grid.y), (0, grid.x))
            )
            if lungs[box].all() and np.all(hu[box] == TISSUE_HU["lung"]):
                _draw_tube(hu, grid, centre, centre, radius, value)
                break

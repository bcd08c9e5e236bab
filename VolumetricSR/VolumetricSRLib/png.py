"""PNG writing (zlib + struct, no imaging library) and the review montage of thick and thin volumes.

The montage shows, for each volume, the axial, coronal and sagittal planes through one world point,
resampled on one isotropic world grid so that every row lines up: radiological orientation
(patient right on the image's left, anterior at the top of the axial plane, superior at the top of
the coronal and sagittal planes, anterior on the left of the sagittal plane).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from .atomic import write_bytes_atomically

LUNG_WINDOW = (-1350.0, 150.0)
ACCENT_RGB = (240, 150, 40)
SEPARATOR_RGB = (40, 40, 40)
BACKGROUND_RGB = (0, 0, 0)
MAX_PANEL_PIXELS = 512
_SEPARATOR = 4
_LABEL_SCALE = 2
_LABEL_BAND = 5 * _LABEL_SCALE + 6
_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)

# A 3 x 5 bitmap font: each glyph is five rows of three pixels, read left to right, top to bottom.
_GLYPHS = {
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011", "D": "110101101101110",
    "E": "111100110100111", "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010", "P": "110101110100100",
    "Q": "010101101110011", "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", "0": "111101101101111", "1": "010110010010111",
    "2": "110001010100111", "3": "110001010001110", "4": "101101111001001", "5": "111100110001110",
    "6": "011100111101111", "7": "111001010010010", "8": "111101111101111", "9": "111101111001110",
    "-": "000000111000000", ".": "000000000000010", "(": "010100100100010", ")": "010001001001010",
    ":": "000010000010000", "/": "001001010100100", " ": "000000000000000",
}  # fmt: skip


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"PNG images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in _COLOUR_TYPES or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    height, width, channels = image.shape
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
            _chunk(b"IEND", b""),
        )
    )


def write_png(path: str | os.PathLike, image: np.ndarray, overwrite: bool = False) -> Path:
    """Write a uint8 image as PNG, atomically; refuses to replace a file unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    data = encode_png(image)
    return write_bytes_atomically(path, data)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def review_montage(
    rows: list[tuple[str, np.ndarray, np.ndarray]],
    world_point: np.ndarray | None = None,
    window: tuple[float, float] = LUNG_WINDOW,
    spacing_mm: float | None = None,
    labels: bool = True,
) -> np.ndarray:
    """RGB montage (uint8): a row per (label, HU volume (K, J, I), affine); columns axial, coronal, sagittal.

    All planes pass through `world_point` (default: the centre of the volumes' common bounding
    box) and are sampled with nearest-neighbour interpolation on an isotropic grid of
    `spacing_mm` (default: the finest in-plane spacing, coarsened so no panel exceeds
    MAX_PANEL_PIXELS). Outside a volume is black.
    """
    if not rows:
        raise ValueError("the montage needs at least one volume")
    for label, volume, affine in rows:
        if np.ndim(volume) != 3 or np.shape(affine) != (4, 4):
            raise ValueError(f"montage row {label!r} needs a (K, J, I) volume and a 4 x 4 affine")
    low, high = _world_bounds(rows)
    if spacing_mm is None:
        finest = min(float(np.linalg.norm(np.asarray(a)[:3, :2], axis=0).min()) for _, _, a in rows)
        spacing_mm = max(finest, float((high - low).max()) / (MAX_PANEL_PIXELS - 1))
    point = (low + high) / 2.0 if world_point is None else np.asarray(world_point, dtype=np.float64)
    x, y, z = (np.arange(low[n], high[n] + spacing_mm / 2, spacing_mm) for n in range(3))
    x, y, z = x[::-1], y[::-1], z[::-1]  # right -> left, anterior -> posterior, superior -> inferior
    planes = {
        "axial": np.stack(np.broadcast_arrays(x[None, :], y[:, None], point[2]), axis=-1),
        "coronal": np.stack(np.broadcast_arrays(x[None, :], point[1], z[:, None]), axis=-1),
        "sagittal": np.stack(np.broadcast_arrays(point[0], y[None, :], z[:, None]), axis=-1),
    }
    row_height = max(len(y), len(z))
    band = _LABEL_BAND if labels else 0
    width = 2 * len(x) + len(y) + 2 * _SEPARATOR
    height = len(rows) * (row_height + band) + (len(rows) - 1) * _SEPARATOR
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = SEPARATOR_RGB
    top = 0
    for label, volume, affine in rows:
        values, affine = np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64)
        canvas[top : top + band] = BACKGROUND_RGB
        if labels:
            _draw_text(canvas, label.upper(), top + 3, 3, ACCENT_RGB)
        left = 0
        for plane in planes.values():
            grey = _window_to_grey(_sample_plane(values, affine, plane), window)
            h, w = grey.shape
            panel = canvas[top + band : top + band + row_height, left : left + w]
            panel[:] = BACKGROUND_RGB
            offset = (row_height - h) // 2
            panel[offset : offset + h] = grey[:, :, None]
            left += w + _SEPARATOR
        top += band + row_height + _SEPARATOR
    return canvas


def _world_bounds(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest world coordinates of the voxel centres of all volumes."""
    corners = []
    for _, volume, affine in rows:
        k, j, i = np.shape(volume)
        ijk = np.array(np.meshgrid([0, i - 1], [0, j - 1], [0, k - 1], indexing="ij")).reshape(3, -1)
        corners.append((np.asarray(affine, float)[:3, :3] @ ijk).T + np.asarray(affine, float)[:3, 3])
    points = np.concatenate(corners)
    return points.min(axis=0), points.max(axis=0)


def _sample_plane(volume: np.ndarray, affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    """Nearest-neighbour values of a float volume at world points (H, W, 3); NaN outside it."""
    ijk = (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    kji = np.moveaxis(ijk[..., ::-1], -1, 0)
    inside = np.all((kji >= -0.5) & (kji <= np.array(volume.shape)[:, None, None] - 0.5), axis=0)
    values = ndimage.map_coordinates(volume, kji, order=0, mode="nearest")
    return np.where(inside, values, np.nan)


def _window_to_grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return np.rint(scaled * 255).astype(np.uint8)


def _draw_text(canvas: np.ndarray, text: str, top: int, left: int, colour: tuple[int, int, int]) -> None:
    """Draw text with the 3 x 5 font at _LABEL_SCALE; unknown characters are left blank."""
    s = _LABEL_SCALE
    for n, character in enumerate(text):
        glyph = np.array([bit == "1" for bit in _GLYPHS.get(character, _GLYPHS[" "])]).reshape(5, 3)
        x0 = left + n * 4 * s
        if x0 + 3 * s > canvas.shape[1]:
            break
        pixels = np.kron(glyph, np.ones((s, s), bool))
        canvas[top : top + 5 * s, x0 : x0 + 3 * s][pixels] = colour

"""PNG images (written with Pillow) and the review montage of thick and thin volumes.

The montage shows, for each volume, the axial, coronal and sagittal planes through one world point,
resampled on one isotropic world grid so that every row lines up: radiological orientation
(patient right on the image's left, anterior at the top of the axial plane, superior at the top of
the coronal and sagittal planes, anterior on the left of the sagittal plane).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..atomic import write_bytes_atomically

LUNG_WINDOW = (-1350.0, 150.0)
ACCENT_RGB = (240, 150, 40)
SEPARATOR_RGB = (40, 40, 40)
BACKGROUND_RGB = (0, 0, 0)
MAX_PANEL_PIXELS = 512
_SEPARATOR = 4
_LABEL_SIZE = 12
_LABEL_BAND = _LABEL_SIZE + 4
_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"PNG images must be uint8, got {image.dtype}")
    channels = 1 if image.ndim == 2 else (image.shape[2] if image.ndim == 3 else 0)
    if channels not in _CHANNELS or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | os.PathLike, image: np.ndarray, overwrite: bool = False) -> Path:
    """Write a uint8 image as PNG, atomically; refuses to replace a file unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    data = encode_png(image)
    return write_bytes_atomically(path, data)


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
            _draw_text(canvas, label, top, 3, ACCENT_RGB)
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
    """Draw text in Pillow's default font (not anti-aliased, so every glyph pixel is `colour`)."""
    from PIL import Image, ImageDraw, ImageFont

    band = Image.fromarray(canvas[top : top + _LABEL_BAND])
    draw = ImageDraw.Draw(band)
    draw.fontmode = "1"
    draw.text((left, 1), text, fill=colour, font=ImageFont.load_default(size=_LABEL_SIZE))
    canvas[top : top + _LABEL_BAND] = np.asarray(band)

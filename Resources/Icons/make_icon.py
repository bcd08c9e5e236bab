"""Draw the VolumetricSR icon (128 x 128 RGBA): three thick CT slabs turning into eleven thin slices.

Run from anywhere: `python Resources/Icons/make_icon.py` rewrites Resources/Icons/VolumetricSR.png
and the extension icon VolumetricSR.png at the repository root (the same image).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "VolumetricSR"))

from VolumetricSRLib.io.png import ACCENT_RGB, write_png  # noqa: E402

SIZE = 128
SUPERSAMPLE = 4
BACKGROUND = (28, 30, 34)
OUTPUTS = (REPO / "Resources" / "Icons" / "VolumetricSR.png", REPO / "VolumetricSR.png")


def icon_image() -> np.ndarray:
    """The icon as a (128, 128, 4) uint8 RGBA array."""
    n = SIZE * SUPERSAMPLE
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / SUPERSAMPLE  # pixel-unit coordinates of the sub-samples
    rgb = np.zeros((n, n, 3))
    alpha = _rounded_box(x, y, 4, 4, 124, 124, 20).astype(float)
    rgb[:] = BACKGROUND
    # Three thick slabs (5 mm): CT greys, lighter from bottom to top, with a bright top edge.
    for n_slab, grey in enumerate((120, 155, 190)):
        top = 26 + n_slab * 27
        _paint(rgb, _rounded_box(x, y, 14, top, 50, top + 22, 3), (grey,) * 3)
        _paint(rgb, _rounded_box(x, y, 14, top, 50, top + 3, 1.5), (min(grey + 45, 255),) * 3)
    # Eleven thin slices (1 mm): the ones on a thick slab's centre in white, the new ones in grey.
    # Thin slice 5 k lies level with the centre of slab k, as in the geometry rule.
    for n_slice in range(11):
        centre = 37 + n_slice * 5.4
        grey = 240 if n_slice % 5 == 0 else 160
        _paint(rgb, _rounded_box(x, y, 76, centre - 1.6, 114, centre + 1.6, 1.2), (grey,) * 3)
    # The accent: a chevron from the slabs to the slices.
    _paint(rgb, _chevron(x, y, 57, 51, 69, 64, 57, 77, 3.2), ACCENT_RGB)
    image = np.concatenate([rgb, 255 * alpha[..., None]], axis=-1)
    image = image.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 4).mean(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _rounded_box(x, y, x0, y0, x1, y1, radius) -> np.ndarray:
    """Inside the rectangle [x0, x1] x [y0, y1] with corners rounded by `radius`."""
    dx = np.maximum(np.maximum(x0 + radius - x, x - (x1 - radius)), 0)
    dy = np.maximum(np.maximum(y0 + radius - y, y - (y1 - radius)), 0)
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return inside & (dx**2 + dy**2 <= radius**2)


def _chevron(x, y, ax, ay, bx, by, cx, cy, half_width) -> np.ndarray:
    """Points within `half_width` of the polyline a-b-c."""
    return (_segment_distance(x, y, ax, ay, bx, by) <= half_width) | (
        _segment_distance(x, y, bx, by, cx, cy) <= half_width
    )


def _segment_distance(x, y, ax, ay, bx, by) -> np.ndarray:
    vx, vy = bx - ax, by - ay
    t = np.clip(((x - ax) * vx + (y - ay) * vy) / max(vx * vx + vy * vy, 1e-12), 0.0, 1.0)
    return np.hypot(x - ax - t * vx, y - ay - t * vy)


def _paint(rgb: np.ndarray, mask: np.ndarray, colour) -> None:
    rgb[mask] = colour


def main() -> int:
    image = icon_image()
    for path in OUTPUTS:
        write_png(path, image, overwrite=True)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

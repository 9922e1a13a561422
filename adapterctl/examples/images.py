"""The two sample pictures ``adapterctl demo`` trains on, drawn from code (no photo is shipped).

``sample_scene.png`` stands in for a photo (a subject: a house on a hill under a sun) and
``sample_painting.png`` for a painting (a style: coloured brush strokes). They are synthetic on
purpose: their licence is this repository's, and a test redraws them and compares the pixels.
Regenerate with ``python -m adapterctl.examples.images``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCENE = "sample_scene.png"
PAINTING = "sample_painting.png"
SIZE = 256


def scene() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = np.zeros((SIZE, SIZE, 3))
    img[..., 0], img[..., 1], img[..., 2] = 0.45 + 0.3 * y, 0.65 + 0.2 * y, 0.95 - 0.2 * y  # sky
    hill = y > 0.62 + 0.08 * np.sin(x * 5.0)
    img[hill] = np.stack([0.25 + 0.1 * x, 0.55 - 0.15 * y, 0.2 + 0 * x], -1)[hill]
    sun = (x - 0.78) ** 2 + (y - 0.2) ** 2 < 0.07 ** 2
    img[sun] = (1.0, 0.85, 0.3)
    wall = (np.abs(x - 0.4) < 0.12) & (y > 0.48) & (y < 0.68)
    img[wall] = (0.85, 0.8, 0.7)
    roof = (y > 0.36) & (y <= 0.48) & (np.abs(x - 0.4) < 0.16 * (y - 0.36) / 0.12)
    img[roof] = (0.65, 0.2, 0.15)
    door = (np.abs(x - 0.4) < 0.025) & (y > 0.58) & (y < 0.68)
    img[door] = (0.35, 0.22, 0.12)
    return _u8(img)


def painting() -> np.ndarray:
    rng = np.random.default_rng(7)
    palette = np.array([(0.12, 0.2, 0.45), (0.9, 0.7, 0.2), (0.85, 0.35, 0.2), (0.2, 0.5, 0.45), (0.95, 0.9, 0.8)])
    img = np.tile(palette[0], (SIZE, SIZE, 1))
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    for _ in range(140):  # short curved strokes, each one colour with a little shading
        cx, cy, angle = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(0, np.pi)
        length, width = rng.uniform(20, 60), rng.uniform(3, 7)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle) - 0.004 * u ** 2
        stroke = (np.abs(u) < length / 2) & (np.abs(v) < width)
        colour = palette[rng.integers(0, len(palette))] * (0.85 + 0.15 * (v[stroke] / width)[:, None])
        img[stroke] = colour
    return _u8(img)


def _u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_images(directory: Path = HERE) -> list[Path]:
    from PIL import Image

    out = []
    for name, draw in ((SCENE, scene), (PAINTING, painting)):
        path = directory / name
        Image.fromarray(draw()).save(path, optimize=True)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in write_images(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {p}")

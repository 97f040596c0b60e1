"""Pictures of the pipeline's files: label maps in the VOC palette, CAM heat maps, and
panels of several images side by side with column titles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from wsss.data.palette import voc_palette

_PALETTE = np.asarray(voc_palette(), np.uint8).reshape(256, 3)


def colorize(labels: np.ndarray) -> np.ndarray:
    """uint8 label map [H, W] -> RGB [H, W, 3] in the VOC palette (255 = white)."""
    return _PALETTE[labels]


def heat(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] [H, W] -> RGB [H, W, 3]: dark blue (0) through red to yellow (1)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 80], [40, 40, 220], [220, 40, 40], [255, 230, 60]], np.float32)
    pos = v * (len(stops) - 1)
    low = np.floor(pos).clip(0, len(stops) - 2).astype(int)[..., 0]
    frac = pos[..., 0] - low
    rgb = stops[low] * (1 - frac[..., None]) + stops[low + 1] * frac[..., None]
    return rgb.astype(np.uint8)


def cam_overlay(image: np.ndarray, maps: np.ndarray, weight: float = 0.55) -> np.ndarray:
    """Image [H, W, 3] blended with the heat map of ``max_c maps`` [K, H, W]."""
    peak = maps.max(0) if len(maps) else np.zeros(image.shape[:2], np.float32)
    return (image * (1 - weight) + heat(peak) * weight).astype(np.uint8)


def panel(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    gap: int = 4,
    title_height: int = 16,
) -> Image.Image:
    """Rows of RGB images [H, W, 3] (equal size within a row) under column ``titles``."""
    width = max(sum(im.shape[1] for im in row) + gap * (len(row) - 1) for row in rows)
    height = title_height + sum(max(im.shape[0] for im in row) + gap for row in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for title, im in zip(titles, rows[0]):
        draw.text((x + 2, 2), title, fill="black")
        x += im.shape[1] + gap
    y = title_height
    for row in rows:
        x = 0
        for im in row:
            canvas.paste(Image.fromarray(im), (x, y))
            x += im.shape[1] + gap
        y += max(im.shape[0] for im in row) + gap
    return canvas

"""The PASCAL VOC colour palette, used for every label-map PNG the toolkit writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """The 256-entry VOC palette as a flat [r, g, b, r, g, b, ...] list (index 255 is white)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    palette[255] = (255, 255, 255)
    return palette.flatten().tolist()


def write_label_png(directory: str | os.PathLike[str], image_id: str, labels: np.ndarray) -> None:
    """Save a label map as ``directory/<image_id>.png`` (ids may contain '/')."""
    path = Path(directory) / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    label_image(labels).save(path)


def label_image(labels: np.ndarray) -> Image.Image:
    """A palette ('P' mode) PIL image of a uint8 label map [H, W]."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    return img

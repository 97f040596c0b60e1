"""The dataset manifest: one JSON file that every stage reads instead of a dataset.

Each dataset loader (``voc``, ``coco``, ``folder``, ``demo``) turns its native layout into a
:class:`Manifest`: the foreground class names, whether the dataset has a background class,
and per split a list of :class:`Record` (image path, mask path or ``None``, image-level
labels). :func:`validate` then opens every file once, so that a broken dataset stops the
workflow at its first rule with a message naming the file.

Label maps (masks) use one convention throughout the toolkit:

- with a background class: 0 = background, foreground class ``k`` (0-based) = ``k + 1``;
- without: foreground class ``k`` = ``k``;
- 255 = ignored (unlabelled, borders).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from wsss.core.atomic import write_json

IGNORE = 255
FORMAT_VERSION = 1


class DatasetError(ValueError):
    """Bad input data. The message names the offending file and the problem."""


@dataclass(frozen=True)
class Record:
    """One image of a split.

    ``labels`` are 0-based foreground class indices present in the image; ``size`` is the
    image's (height, width) in pixels, filled in by :func:`validate`.
    """

    id: str
    image: str
    mask: str | None
    labels: tuple[int, ...]
    size: tuple[int, int] | None = None


@dataclass
class Manifest:
    """A dataset: its classes and, per split, its images."""

    name: str
    classes: tuple[str, ...]
    has_background: bool
    splits: dict[str, list[Record]] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        """Label-map value of foreground class 0 (1 with a background class, else 0)."""
        return int(self.has_background)

    @property
    def num_labels(self) -> int:
        """Number of distinct label-map values other than 255 (classes + background)."""
        return len(self.classes) + self.offset

    @property
    def label_names(self) -> list[str]:
        """Name of every label-map value 0 .. num_labels - 1."""
        return (["background"] if self.has_background else []) + list(self.classes)

    def split(self, name: str) -> list[Record]:
        """The records of split ``name``; a missing or empty split is an error."""
        if name not in self.splits:
            raise DatasetError(
                f"dataset '{self.name}' has no split '{name}' (it has: {sorted(self.splits)})"
            )
        records = self.splits[name]
        if not records:
            raise DatasetError(f"dataset '{self.name}': split '{name}' is empty")
        return records

    def with_masks(self, name: str) -> list[Record]:
        """The records of split ``name`` that have a ground-truth mask (at least one)."""
        records = [r for r in self.split(name) if r.mask]
        if not records:
            raise DatasetError(f"dataset '{self.name}': split '{name}' has no ground-truth masks")
        return records

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "classes": list(self.classes),
            "has_background": self.has_background,
            "splits": {
                split: [
                    {
                        "id": r.id,
                        "image": r.image,
                        "mask": r.mask,
                        "labels": list(r.labels),
                        "size": list(r.size) if r.size else None,
                    }
                    for r in records
                ]
                for split, records in self.splits.items()
            },
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the manifest as JSON, atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"{path}: cannot read dataset manifest: {err}") from err
        if data.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{path}: unsupported manifest format {data.get('format_version')}")
        splits = {
            split: [
                Record(
                    id=r["id"],
                    image=r["image"],
                    mask=r["mask"],
                    labels=tuple(r["labels"]),
                    size=tuple(r["size"]) if r["size"] else None,
                )
                for r in records
            ]
            for split, records in data["splits"].items()
        }
        return cls(data["name"], tuple(data["classes"]), bool(data["has_background"]), splits)


def labels_from_mask(mask: np.ndarray, num_classes: int, has_background: bool) -> tuple[int, ...]:
    """Foreground class indices present in a label map (background and 255 dropped)."""
    offset = int(has_background)
    values = np.unique(mask)
    values = values[(values >= offset) & (values < num_classes + offset)]
    return tuple(int(v) - offset for v in values)


def class_index(name: str, classes: Iterable[str], source: str | os.PathLike[str]) -> int:
    """Index of class ``name``; an unknown name is an error naming ``source``."""
    classes = list(classes)
    if name not in classes:
        raise DatasetError(f"{source}: label '{name}' is not in the class list {classes}")
    return classes.index(name)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file fully into uint8 RGB [H, W, 3]; errors name the file.

    The image is turned as its EXIF orientation says (as viewers show it), so masks and
    predictions line up with what the user sees. 16-bit and 32-bit greyscale images are
    scaled to 8 bits by their type's range (not clipped, which would turn them white)."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file is missing")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in WIDE_GREY:
                return np.repeat(_to_8bit(np.asarray(img), img.mode)[..., None], 3, axis=2)
            return np.array(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: corrupt or unreadable image ({err})") from err


# Pillow modes of greyscale images wider than 8 bits, and the full scale of each.
WIDE_GREY = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": None, "F": None}


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """A wide greyscale array in [0, full scale] -> uint8. Mode I (32-bit integers, which
    Pillow also uses for 16-bit PNGs) and F take 255 or 65535 as full scale, whichever
    holds the values."""
    values = values.astype(np.float64)
    full = WIDE_GREY[mode] or (255.0 if values.max(initial=0) <= 255 else 65535.0)
    return np.clip(np.round(values * (255.0 / full)), 0, 255).astype(np.uint8)


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(height, width) of an opened image as shown, after its EXIF orientation."""
    width, height = img.size
    if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # turned by 90 degrees
        width, height = height, width
    return height, width


EXIF_ORIENTATION = 0x0112


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label-map PNG as uint8 [H, W] (palette indices, not colours), turned by its
    EXIF orientation if it has one, like the images."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: mask file is missing")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # as for images (masks rarely carry EXIF)
            if img.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(
                    f"{path}: mask has image mode {img.mode}; expected a palette or "
                    "greyscale PNG of label indices"
                )
            values = np.asarray(img)
            if values.dtype != np.uint8:
                wide = np.unique(values[values > 255])
                if wide.size:
                    raise DatasetError(
                        f"{path}: mask values {wide[:10].tolist()} do not fit a label map "
                        f"(0..254, 255 ignored); a {img.mode} mask must hold class indices"
                    )
            return values.astype(np.uint8)
    except (OSError, SyntaxError) as err:
        raise DatasetError(f"{path}: corrupt or unreadable mask ({err})") from err


def validate(manifest: Manifest, splits: Iterable[str], check_pixels: bool = True) -> Manifest:
    """Check every image and mask of ``splits`` and fill in image sizes.

    Raises :class:`DatasetError` naming the file for: a missing or corrupt image or mask, a
    mask whose size differs from its image, a mask value outside the class list, a label
    outside the class list, an empty split. ``check_pixels=False`` reads headers only.
    """
    checked: dict[str, Record] = {}
    for split in splits:
        records = manifest.split(split)
        out = []
        for rec in records:
            if rec.id not in checked:
                checked[rec.id] = _check_record(manifest, rec, check_pixels)
            out.append(checked[rec.id])
        manifest.splits[split] = out
    return manifest


def _check_record(manifest: Manifest, rec: Record, check_pixels: bool) -> Record:
    bad = [lab for lab in rec.labels if not 0 <= lab < len(manifest.classes)]
    if bad:
        raise DatasetError(f"{rec.image}: labels {bad} are not in the class list")
    if check_pixels:
        height, width = read_image(rec.image).shape[:2]
    else:
        height, width = _header_size(rec.image)
    if rec.mask is not None:
        if check_pixels:
            mask = read_mask(rec.mask)
            mask_size = mask.shape
            values = np.unique(mask)
            wrong = values[(values >= manifest.num_labels) & (values != IGNORE)]
            if wrong.size:
                raise DatasetError(
                    f"{rec.mask}: mask values {wrong.tolist()} are not in the class list "
                    f"(0..{manifest.num_labels - 1} or {IGNORE})"
                )
        else:
            mask_size = _header_size(rec.mask)
        if tuple(mask_size) != (height, width):
            hint = ""
            if tuple(mask_size) == _header_size(rec.image, oriented=False):
                hint = (
                    "; the image's EXIF orientation turns it, and images are read as shown: "
                    "draw the mask on the image as a viewer shows it"
                )
            raise DatasetError(
                f"{rec.mask}: mask size {mask_size[1]}x{mask_size[0]} differs from its image "
                f"{rec.image} ({width}x{height}){hint}"
            )
    return replace(rec, size=(int(height), int(width)))


def _header_size(path: str, oriented: bool = True) -> tuple[int, int]:
    """(height, width) from the file's header; ``oriented``: after its EXIF orientation."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file is missing")
    try:
        with Image.open(path) as img:
            return oriented_size(img) if oriented else (img.size[1], img.size[0])
    except OSError as err:
        raise DatasetError(f"{path}: corrupt or unreadable image ({err})") from err

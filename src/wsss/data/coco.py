"""COCO instance annotations -> :class:`Manifest` plus semantic label-map PNGs.

Reads ``root/annotations/instances_{split}{year}.json``; images are
``root/{split}{year}/<file_name>``. Classes are the JSON's categories sorted by category id,
renumbered 0..N-1 (80 for COCO 2014). An image's labels are every category annotated in it,
crowd annotations included. Images without any annotation are left out of the manifest.

For every kept image a label map ``mask_dir/{split}/<id>.png`` (id = file-name stem) is
written with a background class (0 = background, class ``k`` = ``k + 1``): instances are
painted largest first so that smaller ones stay on top, and crowd regions are painted 255
(ignored). A mask that exists and is newer than its JSON is not rewritten.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from wsss.core.atomic import save_png
from wsss.data.manifest import IGNORE, DatasetError, Manifest, Record
from wsss.data.palette import label_image


def build(
    root: str | os.PathLike[str],
    mask_dir: str | os.PathLike[str],
    year: int = 2014,
    splits: tuple[str, ...] = ("train", "val"),
    name: str = "coco",
) -> Manifest:
    """Read COCO ``splits`` and write their semantic masks under ``mask_dir``."""
    root, mask_dir = Path(root).absolute(), Path(mask_dir).absolute()
    classes: tuple[str, ...] | None = None
    records = {}
    for split in splits:
        path = root / "annotations" / f"instances_{split}{year}.json"
        data = _load_json(path)
        category_ids, names = _categories(data, path)
        if classes is not None and names != classes:
            raise DatasetError(f"{path}: categories differ from those of the other splits")
        classes = names
        records[split] = _split_records(
            data, path, category_ids, root / f"{split}{year}", mask_dir / split
        )
    if classes is None:
        raise ValueError("coco.build needs at least one split")
    return Manifest(name, classes, True, records)


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file is missing")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read annotation JSON ({err})") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: annotation JSON is not an object")
    return data


def _get(entry: dict[str, Any], key: str, path: Path, what: str) -> Any:
    """``entry[key]``; a missing key is an error naming the file, the key and ``what``."""
    if not isinstance(entry, dict) or key not in entry:
        raise DatasetError(f"{path}: {what} is missing the key '{key}'")
    return entry[key]


def _categories(data: dict[str, Any], path: Path) -> tuple[dict[int, int], tuple[str, ...]]:
    """Category id -> contiguous class index, and the class names in that order."""
    categories = _get(data, "categories", path, "the file")
    pairs = sorted(
        (_get(c, "id", path, "a category"), _get(c, "name", path, "a category")) for c in categories
    )
    return {cat_id: index for index, (cat_id, _) in enumerate(pairs)}, tuple(n for _, n in pairs)


def _split_records(
    data: dict[str, Any], path: Path, category_ids: dict[int, int], image_dir: Path, out_dir: Path
) -> list[Record]:
    """The records of one split's annotated images, writing their masks as needed."""
    by_image = defaultdict(list)
    for ann in _get(data, "annotations", path, "the file"):
        by_image[_get(ann, "image_id", path, "an annotation")].append(ann)
    json_mtime = path.stat().st_mtime_ns
    records = []
    for image in _get(data, "images", path, "the file"):
        anns = by_image.get(_get(image, "id", path, "an image"))
        if not anns:
            continue
        file_name = _get(image, "file_name", path, "an image")
        image_id = Path(file_name).stem
        mask_path = out_dir / f"{image_id}.png"
        if not (mask_path.is_file() and mask_path.stat().st_mtime_ns > json_mtime):
            save_png(mask_path, label_image(semantic_mask(image, anns, category_ids, path)))
        labels = sorted({_class(ann, category_ids, path) for ann in anns})
        records.append(Record(image_id, str(image_dir / file_name), str(mask_path), tuple(labels)))
    return sorted(records, key=lambda r: r.id)


def _class(ann: dict[str, Any], category_ids: dict[int, int], path: Path) -> int:
    cat_id = _get(ann, "category_id", path, "an annotation")
    if cat_id not in category_ids:
        raise DatasetError(f"{path}: annotation {ann.get('id')} has unknown category {cat_id}")
    return category_ids[cat_id]


def semantic_mask(
    image: dict[str, Any], anns: list[dict[str, Any]], category_ids: dict[int, int], path: Path
) -> np.ndarray:
    """uint8 label map [H, W] of one image's annotations (largest painted first)."""
    height = _get(image, "height", path, "an image")
    width = _get(image, "width", path, "an image")
    label = np.zeros((height, width), dtype=np.uint8)
    painted = []
    for ann in anns:
        region = _decode(ann, height, width, path)
        if region.shape != (height, width):
            raise DatasetError(
                f"{path}: annotation {ann.get('id')} has size {region.shape}, its image "
                f"{image['file_name']} is {(height, width)}"
            )
        value = IGNORE if ann.get("iscrowd", 0) else _class(ann, category_ids, path) + 1
        painted.append((int(region.sum()), value, region))
    for _, value, region in sorted(painted, key=lambda p: -p[0]):
        label[region.astype(bool)] = value
    return label


def _decode(ann: dict[str, Any], height: int, width: int, path: Path) -> np.ndarray:
    """Binary mask [H, W] of a polygon list, uncompressed RLE or compressed RLE.

    Polygons with fewer than 3 points have no area and are dropped.
    """
    segmentation = _get(ann, "segmentation", path, "an annotation")
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if len(p) >= 6]
            if not polygons:
                return np.zeros((height, width), dtype=np.uint8)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle)
    except Exception as err:  # pycocotools raises bare Exception for unsupported input
        raise DatasetError(
            f"{path}: annotation {ann.get('id')} has a malformed segmentation ({err})"
        ) from err

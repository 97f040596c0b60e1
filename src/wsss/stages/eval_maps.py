"""Stage: score class maps (CAMs or refined CAMs) against the ground truth of a split.

With a background class the maps are decoded with every background value of a sweep
(alpha of ``(1 - max M) ** alpha``, or a flat threshold; for refined maps, the background
maps stored per alpha); the best value and the whole curve are kept. Without one, each
pixel takes the argmax over the image's present classes. Also scored: the trivial floor,
where every pixel gets background (with a background class) or the image's present class
that covers most pixels in the split (without).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsss.atomic import write_json
from wsss.data.manifest import DatasetError, Manifest, Record, read_mask
from wsss.metrics import confusion, maps_to_labels, scores
from wsss.store import MapsReader
from wsss.training import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalMapsParams:
    """Which split to score and the background sweep (``bg_mode``: alpha | threshold)."""

    split: str = "train"
    bg_mode: str = "alpha"
    bg_values: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0)


def run(
    manifest_path: str | os.PathLike[str],
    maps_paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    stage: str,
    params: EvalMapsParams,
) -> dict:
    """Score the maps of every image of the split that has a mask; write JSON to ``out``."""
    if params.bg_mode not in ("alpha", "threshold"):
        raise ValueError(f"bg_mode must be 'alpha' or 'threshold', not '{params.bg_mode}'")
    manifest = Manifest.load(manifest_path)
    records = [r for r in manifest.split(params.split) if r.mask]
    if not records:
        raise DatasetError(f"{manifest_path}: split '{params.split}' has no ground-truth masks")
    n = manifest.num_labels
    prior = _class_pixels(records, manifest) if not manifest.has_background else None
    floor = np.zeros((n, n), np.int64)

    with MapsReader(maps_paths) as reader:
        reader.check_covers([r.id for r in records])
        mode = "alpha" if reader.alphas else params.bg_mode
        values: Sequence[float | None] = [None]
        if manifest.has_background:
            values = reader.alphas or params.bg_values
        confs = {v: np.zeros((n, n), np.int64) for v in values}
        for rec in progress(records, f"eval {stage}", "img"):
            gt = read_mask(rec.mask)
            item = reader[rec.id].at_image_size()
            for index, v in enumerate(values):
                if item.background is not None:
                    kw = {"background": item.background[index]}
                else:
                    kw = {mode: v} if manifest.has_background else {}
                pred = maps_to_labels(item.maps, item.classes, manifest.has_background, **kw)
                confs[v] += confusion(pred, gt, n)
            floor += confusion(_floor_labels(rec, gt.shape, manifest, prior), gt, n)

    curve = [
        {mode: v, "miou": scores(c, manifest.label_names)["miou"]}
        for v, c in confs.items()
        if v is not None
    ]
    best = max(values, key=lambda v: scores(confs[v], manifest.label_names)["miou"])
    result = {
        "stage": stage,
        "split": params.split,
        "num_images": len(records),
        **scores(confs[best], manifest.label_names),
        "best": {mode: best} if best is not None else {},
        "curve": curve,
        "confusion": confs[best].tolist(),
        "labels": manifest.label_names,
        "floor": {
            k: v
            for k, v in scores(floor, manifest.label_names).items()
            if k in ("miou", "per_class")
        },
    }
    write_json(out, result)
    log.info(
        "%s mIoU %.2f (floor %.2f) on %d images of '%s'",
        stage,
        result["miou"],
        result["floor"]["miou"],
        len(records),
        params.split,
    )
    return result


def _class_pixels(records: Sequence[Record], manifest: Manifest) -> np.ndarray:
    """Pixels of each label value over the split's masks (the dataset prior of the floor)."""
    counts = np.zeros(manifest.num_labels, np.int64)
    for rec in records:
        mask = read_mask(rec.mask)
        counts += np.bincount(mask[mask != 255].ravel(), minlength=manifest.num_labels)[
            : manifest.num_labels
        ]
    return counts


def _floor_labels(
    rec: Record, shape: tuple[int, ...], manifest: Manifest, prior: np.ndarray | None
) -> np.ndarray:
    if prior is None or not rec.labels:
        return np.zeros(shape, np.uint8)
    top = max(rec.labels, key=lambda c: prior[c + manifest.offset])
    return np.full(shape, top + manifest.offset, np.uint8)

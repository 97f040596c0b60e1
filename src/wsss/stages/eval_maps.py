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
from wsss.data.manifest import IGNORE, Manifest, Record, read_mask
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
    records = manifest.with_masks(params.split)
    n = manifest.num_labels
    gt_counts = np.zeros((len(records), n), np.int64)  # pixels of each label value per image

    with MapsReader(maps_paths) as reader:
        reader.check_covers([r.id for r in records])
        mode = "alpha" if reader.alphas else params.bg_mode
        values: Sequence[float | None] = [None]
        if manifest.has_background:
            values = reader.alphas or params.bg_values
        confs = {v: np.zeros((n, n), np.int64) for v in values}
        for i, rec in enumerate(progress(records, f"eval {stage}", "img")):
            gt = read_mask(rec.mask)
            gt_counts[i] = np.bincount(gt[gt != IGNORE].ravel(), minlength=n)[:n]
            item = reader[rec.id].at_image_size()
            for index, v in enumerate(values):
                if item.background is not None:
                    kw = {"background": item.background[index]}
                else:
                    kw = {mode: v} if manifest.has_background else {}
                pred = maps_to_labels(item.maps, item.classes, manifest.has_background, **kw)
                confs[v] += confusion(pred, gt, n)

    mious = {v: scores(c, manifest.label_names)["miou"] for v, c in confs.items()}
    curve = [{mode: v, "miou": m} for v, m in mious.items() if v is not None]
    best = max(values, key=mious.__getitem__)
    floor = _floor_confusion(records, gt_counts, manifest)
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


def _floor_confusion(
    records: Sequence[Record], gt_counts: np.ndarray, manifest: Manifest
) -> np.ndarray:
    """Confusion matrix of the trivial floor, from each image's ground-truth label counts.

    Every pixel of an image is predicted as one value: background with a background class;
    without one, the image's present class with the most pixels over the split.
    """
    prior = gt_counts.sum(0)
    floor = np.zeros((manifest.num_labels,) * 2, np.int64)
    for rec, counts in zip(records, gt_counts):
        value = 0
        if not manifest.has_background and rec.labels:
            value = max(rec.labels, key=lambda c: prior[c + manifest.offset]) + manifest.offset
        floor[:, value] += counts
    return floor

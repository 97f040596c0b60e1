"""Stage: score label-map PNGs (pseudo-masks, predictions, affinity labels) against the
ground truth. Pixels a label map leaves neutral (255, as affinity labels do) are not
scored; ``coverage`` is the share of scored ground-truth pixels that are not neutral."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss.atomic import write_json
from wsss.data.manifest import IGNORE, DatasetError, Manifest, read_mask
from wsss.metrics import confusion, scores
from wsss.training import progress

log = logging.getLogger(__name__)


def find_labels(dirs: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """id -> PNG path over shard directories; an id found twice is an error."""
    found: dict[str, Path] = {}
    for directory in dirs:
        for path in sorted(Path(directory).rglob("*.png")):
            image_id = path.relative_to(directory).with_suffix("").as_posix()
            if image_id in found:
                raise DatasetError(f"{path}: image '{image_id}' is also in {found[image_id]}")
            found[image_id] = path
    return found


def run(
    manifest_path: str | os.PathLike[str],
    label_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    stage: str,
    split: str,
) -> dict:
    """Score ``<id>.png`` of every image of ``split`` with a mask; write JSON to ``out``."""
    manifest = Manifest.load(manifest_path)
    records = manifest.with_masks(split)
    labels = find_labels(label_dirs)
    missing = [r.id for r in records if r.id not in labels]
    if missing:
        raise DatasetError(
            f"{len(missing)} images of '{split}' have no label map in "
            f"{', '.join(map(str, label_dirs))}: {missing[:5]}"
        )
    n = manifest.num_labels
    conf = np.zeros((n, n), np.int64)
    valid_pixels = 0
    for rec in progress(records, f"eval {stage}", "img"):
        gt = read_mask(rec.mask)
        pred = read_mask(labels[rec.id])
        if pred.shape != gt.shape:
            raise DatasetError(f"{labels[rec.id]}: size {pred.shape} differs from {rec.mask}")
        if np.any((pred >= n) & (pred != IGNORE)):
            raise DatasetError(f"{labels[rec.id]}: values outside 0..{n - 1} and {IGNORE}")
        valid_pixels += int((gt != IGNORE).sum())
        gt = np.where(pred == IGNORE, IGNORE, gt)
        conf += confusion(np.where(pred == IGNORE, 0, pred), gt, n)
    result = {
        "stage": stage,
        "split": split,
        "num_images": len(records),
        **scores(conf, manifest.label_names),
        "coverage": round(100 * int(conf.sum()) / max(valid_pixels, 1), 2),
        "confusion": conf.tolist(),
        "labels": manifest.label_names,
    }
    write_json(out, result)
    log.info(
        "%s mIoU %.2f (coverage %.1f%%) on %d images of '%s'",
        stage,
        result["miou"],
        result["coverage"],
        len(records),
        split,
    )
    return result

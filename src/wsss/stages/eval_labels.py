"""Stage: score label-map PNGs (pseudo-masks, predictions, affinity labels) against the
ground truth. Pixels a label map leaves neutral (255, as affinity labels do) are not
scored; ``coverage`` is the share of scored ground-truth pixels that are not neutral."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import ScoreIO
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO(ScoreIO):
    labels: tuple[Path, ...] = arg(help="directories of <id>.png label maps")


def run(io: IO, params: None = None) -> dict:
    """Score ``<id>.png`` of every image of the split with a mask; write JSON to ``io.out``."""
    import logging

    import numpy as np

    from wsss.core.atomic import write_json
    from wsss.core.runtime import progress
    from wsss.data.manifest import IGNORE, DatasetError, Manifest, read_mask
    from wsss.jobs import find_labels
    from wsss.methods.metrics import confusion, scores

    manifest = Manifest.load(io.manifest)
    records = manifest.with_masks(io.split)
    labels = find_labels(io.labels)
    missing = [r.id for r in records if r.id not in labels]
    if missing:
        raise DatasetError(
            f"{len(missing)} images of '{io.split}' have no label map in "
            f"{', '.join(map(str, io.labels))}: {missing[:5]}"
        )
    n = manifest.num_labels
    conf = np.zeros((n, n), np.int64)
    valid_pixels = 0
    for rec in progress(records, f"eval {io.stage}", "img"):
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
        "stage": io.stage,
        "split": io.split,
        "num_images": len(records),
        **scores(conf, manifest.label_names),
        "coverage": round(100 * int(conf.sum()) / max(valid_pixels, 1), 2),
        "confusion": conf.tolist(),
        "labels": manifest.label_names,
    }
    write_json(io.out, result)
    logging.getLogger(__name__).info(
        "%s mIoU %.2f (coverage %.1f%%) on %d images of '%s'",
        io.stage,
        result["miou"],
        result["coverage"],
        len(records),
        io.split,
    )
    return result


STAGE = Stage("eval-labels", "score label-map PNGs against the ground truth", IO, None, run)

"""Stage: score class maps (CAMs or refined CAMs) against the ground truth of a split.

With a background class the maps are decoded with every background value of a sweep
(alpha of ``(1 - max M) ** alpha``, or a flat threshold; for refined maps, the background
maps stored per alpha); the best value and the whole curve are kept. Without one, each
pixel takes the argmax over the image's present classes. Also scored: the trivial floor
(:func:`wsss.methods.metrics.floor_confusion`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import ScoreIO
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO(ScoreIO):
    maps: tuple[Path, ...] = arg(help="class-map shard files (HDF5)")


@dataclass(frozen=True, kw_only=True)
class Params:
    """The background sweep (``bg_mode``: alpha | threshold)."""

    bg_mode: str = arg(
        "alpha",
        "background: (1 - max M)^alpha, or a flat threshold",
        choices=("alpha", "threshold"),
    )
    bg_values: tuple[float, ...] = arg(
        (1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0),
        "background values swept (alphas or thresholds)",
        min_items=1,
    )


def run(io: IO, params: Params) -> dict:
    """Score the maps of every image of the split that has a mask; write JSON to ``io.out``."""
    import logging

    import numpy as np

    from wsss.core.atomic import write_json
    from wsss.core.runtime import progress
    from wsss.data.manifest import IGNORE, Manifest, read_mask
    from wsss.data.store import MapsReader
    from wsss.methods.metrics import confusion, floor_confusion, maps_to_labels, scores

    if params.bg_mode not in ("alpha", "threshold"):
        raise ValueError(f"bg_mode must be 'alpha' or 'threshold', not '{params.bg_mode}'")
    manifest = Manifest.load(io.manifest)
    records = manifest.with_masks(io.split)
    n = manifest.num_labels
    gt_counts = np.zeros((len(records), n), np.int64)  # pixels of each label value per image

    kind = io.stage if io.stage in ("cam", "rw") else None  # CAMs or refined maps: checked
    with MapsReader(io.maps, kind=kind, label_names=manifest.label_names) as reader:
        reader.check_covers([r.id for r in records])
        mode = "alpha" if reader.alphas else params.bg_mode
        values: list[float | None] = [None]
        if manifest.has_background:
            values = list(reader.alphas or params.bg_values)
        confs = {v: np.zeros((n, n), np.int64) for v in values}
        for i, rec in enumerate(progress(records, f"eval {io.stage}", "img")):
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
    floor = floor_confusion(records, gt_counts, manifest)
    result = {
        "stage": io.stage,
        "split": io.split,
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
    write_json(io.out, result)
    logging.getLogger(__name__).info(
        "%s mIoU %.2f (floor %.2f) on %d images of '%s'",
        io.stage,
        result["miou"],
        result["floor"]["miou"],
        len(records),
        io.split,
    )
    return result


STAGE = Stage(
    "eval-maps", "score class maps against the ground truth", IO, Params, run, section="cam.eval"
)

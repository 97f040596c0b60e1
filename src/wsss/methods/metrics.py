"""Segmentation scores from a confusion matrix, and CAM -> label-map decoding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsss.data.manifest import IGNORE, Manifest, Record


def confusion(pred: np.ndarray, gt: np.ndarray, num_labels: int) -> np.ndarray:
    """Confusion matrix int64 [n, n] (rows: ground truth, columns: prediction).

    Pixels whose ground truth is 255 are ignored; ``pred`` must be in 0..n-1.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    valid = gt != IGNORE
    index = gt[valid].astype(np.int64) * num_labels + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_labels**2).reshape(num_labels, num_labels)


def scores(conf: np.ndarray, names: Sequence[str]) -> dict:
    """mIoU, per-class IoU / precision / recall (all in percent) and pixel accuracy.

    A class that appears neither in the ground truth nor in the predictions has no IoU and
    is left out of the mean (reported as ``None``).
    """
    tp = np.diag(conf).astype(np.float64)
    gt_count = conf.sum(1).astype(np.float64)
    pred_count = conf.sum(0).astype(np.float64)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        precision = np.where(pred_count > 0, tp / pred_count, np.nan)
        recall = np.where(gt_count > 0, tp / gt_count, np.nan)

    def per_class(values: np.ndarray) -> dict[str, float | None]:
        return {n: None if np.isnan(v) else round(100 * float(v), 2) for n, v in zip(names, values)}

    total = conf.sum()
    return {
        "miou": round(100 * float(np.nanmean(iou)), 2) if np.any(union > 0) else 0.0,
        "pixel_accuracy": round(100 * float(tp.sum() / total), 2) if total else 0.0,
        "per_class": per_class(iou),
        "precision": per_class(precision),
        "recall": per_class(recall),
    }


def taken_by(
    conf: np.ndarray, names: Sequence[str], name: str, top: int = 2
) -> list[tuple[str, float]]:
    """The labels that take the ground-truth pixels of class ``name`` most often, with the
    share of its pixels each takes (percent, largest first; the class itself left out).

    ``conf``: confusion matrix [n, n] (rows: ground truth), ``names`` its n labels.
    """
    if name not in names:
        raise ValueError(f"no label {name!r} among {list(names)}")
    i = list(names).index(name)
    row = np.asarray(conf, dtype=np.float64)[i]
    total = row.sum()
    others = [j for j in np.argsort(-row, kind="stable") if j != i and row[j] > 0][:top]
    return [(names[j], round(100 * float(row[j] / total), 2)) for j in others] if total else []


def background_score(
    maps: np.ndarray, *, alpha: float | None = None, threshold: float | None = None
) -> np.ndarray:
    """Background map [H, W] from foreground maps [K, H, W] in [0, 1].

    ``alpha``: ``(1 - max_c M_c) ** alpha`` (AffinityNet eq. 2); ``threshold``: a flat
    score (the successor code's 0.15). Exactly one of the two is given.
    """
    if (alpha is None) == (threshold is None):
        raise ValueError("give exactly one of alpha and threshold")
    if threshold is not None:
        return np.full(maps.shape[1:], threshold, dtype=np.float32)
    peak = maps.max(0) if len(maps) else np.zeros(maps.shape[1:], np.float32)
    return np.power(1.0 - peak, alpha).astype(np.float32)


def maps_to_labels(
    maps: np.ndarray,
    classes: Sequence[int],
    has_background: bool,
    *,
    alpha: float | None = None,
    threshold: float | None = None,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Label map uint8 [H, W] from the maps [K, H, W] of the present ``classes``.

    With a background class the background score (``background`` [H, W] if given, else
    from ``alpha`` or ``threshold``) competes in the argmax; without one, the argmax runs
    over the present classes only.
    """
    classes = np.asarray(classes, dtype=np.int64)
    if has_background:
        bg = (
            background
            if background is not None
            else background_score(maps, alpha=alpha, threshold=threshold)
        )
        stacked = np.concatenate([bg[None], maps], 0)
        values = np.concatenate([[0], classes + 1])
    else:
        if len(classes) == 0:
            raise ValueError("an image without labels has no label map when there is no background")
        stacked, values = maps, classes
    return values[np.argmax(stacked, 0)].astype(np.uint8)


def floor_confusion(
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

"""Stage: affinity labels, the confident regions that supervise AffinityNet (paper 3.2.1).

With a background class, for every image:

- dCRF on (background with ``alpha_low``, CAMs) -> argmax: where a class wins although the
  background is enlarged, the pixel is confidently that class;
- dCRF on (background with ``alpha_high``, CAMs) -> argmax: where the background wins
  although it is weakened (and the first CRF agrees), the pixel is confidently background;
- everything else is neutral (255) and ignored when AffinityNet is trained.

Without a background class every pixel belongs to one of the image's classes, so there is
no background to enlarge. The equivalent: dCRF on the CAMs of the present classes
(normalised per pixel into probabilities); a pixel is confidently class ``c`` where ``c``
wins with a CRF probability of at least ``confidence``, neutral elsewhere. An image with a
single label is that class everywhere.

Output: one palette PNG per image (label-map convention, 255 = neutral) in a directory
per shard, at the image resolution.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from wsss.atomic import atomic_dir
from wsss.crf import CRFParams, dense_crf
from wsss.data.manifest import IGNORE, Manifest, read_image
from wsss.data.palette import write_label_png
from wsss.metrics import background_score
from wsss.stages.infer_cam import shard_records
from wsss.store import MapsReader
from wsss.training import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AffinityLabelParams(CRFParams):
    """alpha_low / alpha_high: 4 / 32 in the released code (paper: 4 / 24)."""

    split: str = "train"
    alpha_low: float = 4.0
    alpha_high: float = 32.0
    confidence: float = 0.7


def confident_regions(
    image: np.ndarray,
    maps: np.ndarray,
    classes: np.ndarray,
    has_background: bool,
    params: AffinityLabelParams,
) -> np.ndarray:
    """Affinity label map uint8 [H, W] from CAMs ``maps`` [K, H, W] of ``classes`` [K]."""
    height, width = image.shape[:2]
    classes = np.asarray(classes, dtype=np.int64)
    labels = np.full((height, width), IGNORE, np.uint8)
    if len(classes) == 0:
        if has_background:
            labels[:] = 0
        return labels
    if not has_background:
        if len(classes) == 1:
            labels[:] = classes[0]
            return labels
        q = dense_crf(image, maps, params)
        top = q.argmax(0)
        sure = q.max(0) >= params.confidence
        labels[sure] = classes[top[sure]]
        return labels
    low, high = (
        dense_crf(image, np.concatenate([background_score(maps, alpha=a)[None], maps]), params)
        for a in (params.alpha_low, params.alpha_high)
    )
    fg = low.argmax(0)
    labels[fg > 0] = (classes[fg[fg > 0] - 1] + 1).astype(np.uint8)
    labels[(fg == 0) & (high.argmax(0) == 0)] = 0
    return labels


def run(
    manifest_path: str | os.PathLike[str],
    cams: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    shard: int,
    num_shards: int,
    params: AffinityLabelParams,
) -> None:
    """Write ``out_dir/<id>.png`` for every image of one shard (the directory atomically)."""
    manifest = Manifest.load(manifest_path)
    records = shard_records(manifest.split(params.split), shard, num_shards)
    with MapsReader(cams) as reader, atomic_dir(out_dir) as tmp:
        reader.check_covers([r.id for r in records])
        for rec in progress(records, f"affinity labels shard {shard}", "img"):
            item = reader[rec.id]
            labels = confident_regions(
                read_image(rec.image), item.maps, item.classes, manifest.has_background, params
            )
            write_label_png(tmp, rec.id, labels)
    log.info("wrote %d affinity label maps to %s", len(records), out_dir)

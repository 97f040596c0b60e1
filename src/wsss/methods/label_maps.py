"""Label maps from class maps: the confident regions that supervise AffinityNet (paper
3.2.1) and the pseudo-masks that supervise the segmentation network (paper 3.4).

Affinity labels, with a background class, for every image:

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
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from wsss.core.settings import CRFParams
from wsss.data.manifest import IGNORE
from wsss.data.store import ImageMaps
from wsss.methods.crf import dense_crf
from wsss.methods.metrics import background_score


def confident_regions(
    image: np.ndarray,
    maps: np.ndarray,
    classes: np.ndarray,
    has_background: bool,
    alpha_low: float,
    alpha_high: float,
    confidence: float,
    crf: CRFParams,
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
        q = dense_crf(image, maps, crf)
        top = q.argmax(0)
        sure = q.max(0) >= confidence
        labels[sure] = classes[top[sure]]
        return labels
    low, high = (
        dense_crf(image, np.concatenate([background_score(maps, alpha=a)[None], maps]), crf)
        for a in (alpha_low, alpha_high)
    )
    fg = low.argmax(0)
    labels[fg > 0] = (classes[fg[fg > 0] - 1] + 1).astype(np.uint8)
    labels[(fg == 0) & (high.argmax(0) == 0)] = 0
    return labels


def pseudo_mask(
    image: np.ndarray,
    item: ImageMaps,
    has_background: bool,
    alpha_index: int | None,
    crf: CRFParams | None,
) -> np.ndarray:
    """Label map uint8 [H, W] from the refined maps of one image (``crf``: None for no
    dCRF): upsampled to the image, argmax over the background (if any) and the present
    classes."""
    if alpha_index is not None:  # upsample only the background that is used
        item = replace(item, background=item.background[alpha_index : alpha_index + 1])
    full = item.at_image_size()
    classes = np.asarray(full.classes, dtype=np.int64)
    if has_background:
        scores = np.concatenate([full.background, full.maps])
        values = np.concatenate([[0], classes + 1])
    else:
        scores, values = full.maps, classes
    if len(values) == 1:
        return np.full(full.size, values[0], np.uint8)
    if crf is not None:
        scores = dense_crf(image, np.clip(scores, 0.0, None), crf)
    return values[np.argmax(scores, 0)].astype(np.uint8)

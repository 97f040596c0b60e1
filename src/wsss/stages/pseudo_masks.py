"""Stage: pseudo-masks from refined maps (paper 3.4): upsample to the image, optional
dCRF, argmax (the background included where the dataset has one); palette PNGs."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from wsss.atomic import atomic_dir
from wsss.crf import CRFParams, dense_crf
from wsss.data.manifest import Manifest, read_image
from wsss.data.palette import write_label_png
from wsss.stages.infer_cam import shard_records
from wsss.store import ImageMaps, MapsReader, StoreError
from wsss.training import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoMaskParams(CRFParams):
    """``alpha``: which stored background to use (16 in the paper); dCRF on by default."""

    split: str = "train"
    alpha: float = 16.0
    crf: bool = True


def pseudo_mask(
    image: np.ndarray,
    item: ImageMaps,
    has_background: bool,
    alpha_index: int | None,
    params: PseudoMaskParams,
) -> np.ndarray:
    """Label map uint8 [H, W] from the refined maps of one image."""
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
    if params.crf:
        scores = dense_crf(image, np.clip(scores, 0.0, None), params)
    return values[np.argmax(scores, 0)].astype(np.uint8)


def run(
    manifest_path: str | os.PathLike[str],
    maps: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    shard: int,
    num_shards: int,
    params: PseudoMaskParams,
) -> None:
    """Write ``out_dir/<id>.png`` for every image of one shard (the directory atomically)."""
    manifest = Manifest.load(manifest_path)
    records = shard_records(manifest.split(params.split), shard, num_shards)
    with MapsReader(maps) as reader, atomic_dir(out_dir) as tmp:
        reader.check_covers([r.id for r in records])
        alpha_index = None
        if manifest.has_background:
            if params.alpha not in reader.alphas:
                raise StoreError(
                    f"alpha {params.alpha:g} is not among the walked alphas "
                    f"{reader.alphas} of {maps[0]}"
                )
            alpha_index = reader.alphas.index(params.alpha)
        for rec in progress(records, f"pseudo-masks shard {shard}", "img"):
            labels = pseudo_mask(
                read_image(rec.image), reader[rec.id], manifest.has_background, alpha_index, params
            )
            write_label_png(tmp, rec.id, labels)
    log.info("wrote %d pseudo-masks to %s", len(records), out_dir)

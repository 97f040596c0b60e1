"""Stage: segment the images of one shard of a split with a trained network (multi-scale
+ flip, optional dCRF), one palette PNG per image."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.atomic import atomic_dir
from wsss.crf import CRFParams, dense_crf
from wsss.data.datasets import PAD_RGB, to_tensor
from wsss.data.manifest import Manifest, read_image
from wsss.data.palette import write_label_png
from wsss.models.deeplab import SegNet, load_seg_model
from wsss.stages.infer_cam import shard_records
from wsss.training import autocast, pick_device, progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferSegParams(CRFParams):
    """Test-time scales and flip of the reference (0.5 .. 1.5, < 2 mIoU gain); dCRF off."""

    split: str = "val"
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    flip: bool = True
    crf: bool = False
    batch_size: int = 4
    device: str = "auto"
    amp: bool = True


@torch.no_grad()
def segment(
    model: SegNet, images: Sequence[Tensor], scales: Sequence[float], flip: bool, amp: bool = False
) -> list[Tensor]:
    """Class probabilities [L, H, W] for each image [3, H, W] in [0, 255] of a batch.

    At each scale the images are resized, padded to a common size and segmented in one
    batch (the flipped batch's logits are flipped back and added); the softmax of each,
    cropped and resized back, is averaged over the scales.
    """
    device = next(model.parameters()).device
    totals: list[Tensor | None] = [None] * len(images)
    for scale in scales:
        sizes = [
            (max(1, round(im.shape[1] * scale)), max(1, round(im.shape[2] * scale)))
            for im in images
        ]
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
        batch = torch.tensor(PAD_RGB).view(1, 3, 1, 1).repeat(len(images), 1, height, width)
        for i, (im, (h, w)) in enumerate(zip(images, sizes)):
            batch[i, :, :h, :w] = F.interpolate(
                im[None], (h, w), mode="bilinear", align_corners=False
            )[0]
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch).float()
            if flip:
                logits = logits + model(batch.flip(-1)).float().flip(-1)
        for i, (im, (h, w)) in enumerate(zip(images, sizes)):
            probs = logits[i, :, :h, :w].softmax(0)
            probs = F.interpolate(probs[None], im.shape[1:], mode="bilinear", align_corners=False)[
                0
            ]
            totals[i] = probs if totals[i] is None else totals[i] + probs
    return [t / len(scales) for t in totals]


def labels_from_probs(image: np.ndarray, probs: Tensor, params: InferSegParams) -> np.ndarray:
    """uint8 label map [H, W]: argmax of ``probs`` [L, H, W], after a dCRF if enabled."""
    scores = probs.cpu().numpy()
    if params.crf:
        scores = dense_crf(image, scores, params)
    return scores.argmax(0).astype(np.uint8)


def run(
    manifest_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    shard: int,
    num_shards: int,
    params: InferSegParams,
) -> None:
    """Write ``out_dir/<id>.png`` for every image of one shard of ``params.split``."""
    manifest = Manifest.load(manifest_path)
    records = shard_records(manifest.split(params.split), shard, num_shards)
    device = pick_device(params.device)
    model, _ = load_seg_model(model_path, device)
    with atomic_dir(out_dir) as tmp:
        batches = [
            records[i : i + params.batch_size] for i in range(0, len(records), params.batch_size)
        ]
        for batch in progress(batches, f"segment shard {shard}", "batch"):
            images = [read_image(r.image) for r in batch]
            probs = segment(
                model, [to_tensor(im) for im in images], params.scales, params.flip, params.amp
            )
            for rec, image, p in zip(batch, images, probs):
                write_label_png(tmp, rec.id, labels_from_probs(image, p, params))
    log.info("wrote %d label maps to %s", len(records), out_dir)

"""Stage: multi-scale + flip CAM inference for one shard of a split, into HDF5."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.datasets import to_tensor
from wsss.data.manifest import Manifest, Record, read_image
from wsss.models.cam import CAMNet, load_cam_model
from wsss.store import MapsWriter
from wsss.training import autocast, pick_device, progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferCamParams:
    """Inference settings; the scales are those of the AffinityNet reference code."""

    split: str = "train"
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    device: str = "auto"
    amp: bool = True


def shard_records(records: Sequence[Record], shard: int, num_shards: int) -> list[Record]:
    """Records of shard ``shard`` (0-based): every ``num_shards``-th of the sorted ids."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in 0..{num_shards - 1}")
    return sorted(records, key=lambda r: r.id)[shard::num_shards]


@torch.no_grad()
def multiscale_cams(
    model: CAMNet,
    image: Tensor,
    classes: Sequence[int],
    scales: Sequence[float],
    flip: bool,
    amp: bool = False,
) -> Tensor:
    """CAMs [K, H, W] in [0, 1] of ``classes`` for one image [3, H, W] in [0, 255].

    For each scale (and its horizontal flip) the maps ReLU(w_c^T f) are upsampled to the
    image size and summed; each class map is then divided by its maximum (eq. 1).
    """
    height, width = image.shape[-2:]
    device = next(model.parameters()).device
    index = torch.as_tensor(list(classes), dtype=torch.long, device=device)
    total = torch.zeros(len(classes), height, width, device=device)
    if len(classes) == 0:
        return total
    image = image.to(device)
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        batch = F.interpolate(image[None], size, mode="bilinear", align_corners=False)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with autocast(device, amp):
            cams = model.cams(batch)[:, index].float()
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        total += F.interpolate(cams, (height, width), mode="bilinear", align_corners=False)[0]
    peak = total.flatten(1).max(1).values.view(-1, 1, 1)
    return total / (peak + 1e-5)


def run(
    manifest_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    shard: int,
    num_shards: int,
    params: InferCamParams,
) -> None:
    """Write the CAMs of the present classes of every image of one shard to ``out``."""
    manifest = Manifest.load(manifest_path)
    records = shard_records(manifest.split(params.split), shard, num_shards)
    device = pick_device(params.device)
    model = load_cam_model(model_path, device)
    log.info(
        "CAMs of %d images (shard %d/%d) on %s (%d threads)",
        len(records),
        shard,
        num_shards,
        device,
        torch.get_num_threads(),
    )
    with MapsWriter(
        out, "cam", manifest.label_names, manifest.has_background, shard, num_shards
    ) as writer:
        for rec in progress(records, f"infer-cam shard {shard}", "img"):
            image = to_tensor(read_image(rec.image))
            cams = multiscale_cams(model, image, rec.labels, params.scales, params.flip, params.amp)
            writer.add(rec.id, cams.cpu().numpy().astype(np.float32), rec.labels)
    log.info("wrote %s", out)

"""Stage: refine the CAMs of one shard by the random walk with AffinityNet's affinities.

Per image: AffinityNet features on the stride-8 grid (image padded to a multiple of 8);
CAMs averaged onto the same grid (over the image's pixels only); with a background class,
one background channel ``(1 - max_c M_c) ** alpha`` per alpha of ``alphas`` (computed at
the image resolution, then averaged onto the grid); then ``T^t`` applied to all channels at
once (:func:`wsss.randomwalk.random_walk`). Since the walk is linear, walking one
background channel per alpha gives the refined maps of every alpha in one pass, which the
evaluation sweeps over. Output: the refined maps on the grid (stride 8) in HDF5.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.datasets import PAD_RGB, to_tensor
from wsss.data.manifest import Manifest, read_image
from wsss.metrics import background_score
from wsss.models.affinitynet import AffinityNet, load_affinity_model
from wsss.randomwalk import random_walk
from wsss.stages.infer_cam import shard_records
from wsss.store import MapsReader, MapsWriter
from wsss.training import autocast, pick_device, progress

log = logging.getLogger(__name__)

GRID = 8


@dataclass(frozen=True)
class RandomWalkParams:
    """Random-walk settings of the paper: radius 5, beta 8, t = 2^8; alphas to sweep."""

    split: str = "train"
    radius: int = 5
    beta: float = 8.0
    logt: int = 8
    alphas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0)
    device: str = "auto"
    amp: bool = True


def grid_average(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """[C, H, W] -> [C, gh, gw]: mean of each 8x8 cell over the pixels inside the image."""
    height, width = maps.shape[-2:]
    pad = (0, grid[1] * GRID - width, 0, grid[0] * GRID - height)
    total = F.avg_pool2d(F.pad(maps, pad)[None], GRID)[0]
    inside = F.avg_pool2d(F.pad(torch.ones_like(maps[:1]), pad)[None], GRID)[0]
    return total / inside


@torch.no_grad()
def affinity_features(model: AffinityNet, image: Tensor, amp: bool = False) -> Tensor:
    """Image [3, H, W] in [0, 255] -> features [D, ceil(H/8), ceil(W/8)] (padded input)."""
    height, width = image.shape[-2:]
    gh, gw = -(-height // GRID), -(-width // GRID)
    padded = torch.tensor(PAD_RGB).view(3, 1, 1).repeat(1, gh * GRID, gw * GRID)
    padded[:, :height, :width] = image
    device = next(model.parameters()).device
    with autocast(device, amp):
        features = model(padded[None].to(device))[0].float()
    return features[:, :gh, :gw]


def refine(
    model: AffinityNet,
    image: Tensor,
    maps: np.ndarray,
    has_background: bool,
    params: RandomWalkParams,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Refined foreground maps [K, gh, gw] and background maps [A, gh, gw] (or None)."""
    features = affinity_features(model, image, params.amp)
    grid = tuple(features.shape[-2:])
    channels = [maps]
    alphas = params.alphas if has_background else ()
    if alphas:
        channels.insert(0, np.stack([background_score(maps, alpha=a) for a in alphas]))
    stacked = torch.from_numpy(np.concatenate(channels).astype(np.float32))
    if len(stacked) == 0:
        walked = torch.zeros(0, *grid)
    else:
        cams = grid_average(stacked, grid).to(features.device)
        walked = random_walk(cams, features, params.radius, params.beta, params.logt).cpu()
    walked = walked.numpy()
    return walked[len(alphas) :], (walked[: len(alphas)] if alphas else None)


def run(
    manifest_path: str | os.PathLike[str],
    cams: Sequence[str | os.PathLike[str]],
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    shard: int,
    num_shards: int,
    params: RandomWalkParams,
) -> None:
    """Write the refined maps of every image of one shard to ``out``."""
    manifest = Manifest.load(manifest_path)
    records = shard_records(manifest.split(params.split), shard, num_shards)
    device = pick_device(params.device)
    model = load_affinity_model(model_path, device)
    alphas = params.alphas if manifest.has_background else ()
    log.info(
        "random walk on %d images (shard %d/%d) on %s (%d threads)",
        len(records),
        shard,
        num_shards,
        device,
        torch.get_num_threads(),
    )
    with (
        MapsReader(cams) as reader,
        MapsWriter(
            out,
            "rw",
            manifest.label_names,
            manifest.has_background,
            shard,
            num_shards,
            stride=GRID,
            alphas=alphas,
        ) as writer,
    ):
        reader.check_covers([r.id for r in records])
        for rec in progress(records, f"random walk shard {shard}", "img"):
            item = reader[rec.id]
            fg, bg = refine(
                model, to_tensor(read_image(rec.image)), item.maps, manifest.has_background, params
            )
            writer.add(rec.id, fg, item.classes, background=bg, size=item.size)
    log.info("wrote %s", out)

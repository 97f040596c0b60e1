"""Stage: train AffinityNet on the affinity labels (class-agnostic pair loss, eq. 10)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wsss.atomic import save_torch
from wsss.data.datasets import Augment, ImageMasks
from wsss.data.manifest import DatasetError, Manifest
from wsss.models.affinitynet import AffinityNet, affinity_checkpoint, affinity_loss
from wsss.models.backbones import build_backbone
from wsss.stages.eval_labels import find_labels
from wsss.training import EpochCheckpoints, TrainParams, fingerprint, pick_device, set_seed, train

log = logging.getLogger(__name__)

GRID = 8  # stride of the affinity features


@dataclass(frozen=True)
class TrainAffParams(TrainParams):
    """Reference AffinityNet training: batch 8, 8 epochs, crop 448, no rescaling, output
    stride 8; ``widths``: code (64/128/256 -> 448) or paper (128/256/512 -> 896);
    pairs at grid distance < ``radius``."""

    output_stride: int = 8
    epochs: int = 8
    scale_range: tuple[float, float] = (1.0, 1.0)
    widths: str = "code"
    radius: int = 5


def run(
    manifest_path: str | os.PathLike[str],
    label_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    params: TrainAffParams,
) -> None:
    """Train on the images of ``params.split`` with the affinity labels in ``label_dirs``."""
    if params.crop_size % GRID:
        raise ValueError(f"crop_size must be a multiple of {GRID}, not {params.crop_size}")
    manifest = Manifest.load(manifest_path)
    labels = {k: str(v) for k, v in find_labels(label_dirs).items()}
    records = manifest.split(params.split)
    missing = [r.id for r in records if r.id not in labels]
    if missing:
        raise DatasetError(f"{len(missing)} images have no affinity labels: {missing[:5]}")
    set_seed(params.seed)
    device = pick_device(params.device)
    backbone = build_backbone(params.backbone, params.output_stride, params.weights)
    model = AffinityNet(backbone, params.widths).to(device)
    augment = Augment(params.crop_size, params.scale_range, True, params.jitter)
    dataset = ImageMasks(records, labels, augment, params.seed)

    def loss_fn(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        features = model(images)
        grid = masks[:, GRID // 2 :: GRID, GRID // 2 :: GRID]  # label at each cell's centre
        loss, _ = affinity_loss(
            features,
            grid[:, : features.shape[2], : features.shape[3]],
            params.radius,
            manifest.has_background,
        )
        return loss

    label_files = [Path(labels[r.id]) for r in records]  # their contents, not only names
    checkpoints = EpochCheckpoints(
        state_dir, fingerprint(asdict(params), Path(manifest_path), *label_files)
    )
    train(model, dataset, loss_fn, params, checkpoints, device, "train-aff")
    save_torch(out, affinity_checkpoint(model.cpu(), params.backbone, params.output_stride))
    log.info("wrote %s", out)

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
from wsss.training import (
    EpochCheckpoints,
    fingerprint,
    fit,
    freeze_batchnorm,
    make_loader,
    param_groups,
    pick_device,
    set_seed,
)

log = logging.getLogger(__name__)

GRID = 8  # stride of the affinity features


@dataclass(frozen=True)
class TrainAffParams:
    """Hyperparameters; defaults are those of the reference code (batch 8, 8 epochs, 448)."""

    split: str = "train"
    backbone: str = "lite0"
    weights: str = "imagenet"
    output_stride: int = 8
    widths: str = "code"
    radius: int = 5
    epochs: int = 8
    batch_size: int = 8
    crop_size: int = 448
    scale_range: tuple[float, float] = (1.0, 1.0)
    jitter: float = 0.3
    lr: float = 0.01
    lr_multipliers: tuple[float, float, float, float] = (1.0, 2.0, 10.0, 20.0)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    poly_power: float = 0.9
    freeze_bn: bool = True
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"
    amp: bool = True


def run(manifest_path: str | os.PathLike[str], label_dirs: Sequence[str | os.PathLike[str]],
        out: str | os.PathLike[str], state_dir: str | os.PathLike[str],
        params: TrainAffParams) -> None:  # fmt: skip
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
    if params.freeze_bn:
        freeze_batchnorm(model.backbone)
    groups = param_groups([model.backbone], model.new_modules(), params.weight_decay,
                          params.lr_multipliers)  # fmt: skip
    optimizer = torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum)
    augment = Augment(params.crop_size, params.scale_range, True, params.jitter)
    dataset = ImageMasks(records, labels, augment, params.seed)
    loader = make_loader(dataset, params.batch_size, params.num_workers, device, params.seed)
    log.info("training AffinityNet: %d images, %d epochs x %d steps on %s (%d threads)",
             len(records), params.epochs, len(loader), device, torch.get_num_threads())  # fmt: skip

    def loss_fn(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        features = model(images)
        grid = masks[:, GRID // 2 :: GRID, GRID // 2 :: GRID]  # label at each cell's centre
        loss, _ = affinity_loss(features, grid[:, : features.shape[2], : features.shape[3]],
                                params.radius, manifest.has_background)  # fmt: skip
        return loss

    label_files = [Path(labels[r.id]) for r in records]  # their contents, not only names
    checkpoints = EpochCheckpoints(
        state_dir, fingerprint(asdict(params), Path(manifest_path), *label_files)
    )
    fit(model, loader, optimizer, loss_fn, checkpoints, epochs=params.epochs, base_lr=params.lr,
        poly_power=params.poly_power, device=device, amp=params.amp, seed=params.seed,
        frozen_bn=model.backbone if params.freeze_bn else None, name="train-aff")  # fmt: skip
    save_torch(out, affinity_checkpoint(model.cpu(), params.backbone, params.output_stride))
    log.info("wrote %s", out)

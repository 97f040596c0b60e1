"""Stage: train the CAM network on image-level labels (multi-label soft-margin loss)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss.atomic import save_torch
from wsss.data.datasets import Augment, ImageLabels
from wsss.data.manifest import DatasetError, Manifest
from wsss.models.backbones import build_backbone
from wsss.models.cam import CAMNet, cam_checkpoint
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


@dataclass(frozen=True)
class TrainCamParams:
    """Hyperparameters; defaults are those of the reference code (ResNet-38, VOC)."""

    split: str = "train"
    backbone: str = "lite0"
    weights: str = "imagenet"
    output_stride: int = 16
    head_channels: int = 512
    epochs: int = 15
    batch_size: int = 8
    crop_size: int = 448
    scale_range: tuple[float, float] = (0.5, 1.5)
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


def run(manifest_path: str | os.PathLike[str], out: str | os.PathLike[str],
        state_dir: str | os.PathLike[str], params: TrainCamParams) -> None:  # fmt: skip
    """Train on split ``params.split`` of the manifest; write the model to ``out``.

    The training state after each epoch goes to ``state_dir``; a rerun with the same
    settings resumes after the last finished epoch.
    """
    manifest = Manifest.load(manifest_path)
    records = [r for r in manifest.split(params.split) if r.labels]
    if not records:
        raise DatasetError(f"{manifest_path}: no image of split '{params.split}' has a label")
    set_seed(params.seed)
    device = pick_device(params.device)

    backbone = build_backbone(params.backbone, params.output_stride, params.weights)
    model = CAMNet(backbone, len(manifest.classes), params.head_channels).to(device)
    if params.freeze_bn:
        freeze_batchnorm(model.backbone)
    groups = param_groups([model.backbone], model.new_modules(), params.weight_decay,
                          params.lr_multipliers)  # fmt: skip
    optimizer = torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum)
    augment = Augment(params.crop_size, params.scale_range, True, params.jitter)
    dataset = ImageLabels(records, len(manifest.classes), augment, params.seed)
    loader = make_loader(dataset, params.batch_size, params.num_workers, device, params.seed)
    log.info("training CAM network: %d images, %d epochs x %d steps on %s (%d threads)",
             len(records), params.epochs, len(loader), device, torch.get_num_threads())  # fmt: skip

    def loss_fn(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.multilabel_soft_margin_loss(model(images).float(), targets)

    checkpoints = EpochCheckpoints(state_dir, fingerprint(asdict(params), Path(manifest_path)))
    fit(model, loader, optimizer, loss_fn, checkpoints, epochs=params.epochs, base_lr=params.lr,
        poly_power=params.poly_power, device=device, amp=params.amp, seed=params.seed,
        frozen_bn=model.backbone if params.freeze_bn else None, name="train-cam")  # fmt: skip
    save_torch(out, cam_checkpoint(model.cpu(), params.backbone, params.output_stride,
                                   params.head_channels, list(manifest.classes)))  # fmt: skip
    log.info("wrote %s", out)

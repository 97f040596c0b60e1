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
from wsss.training import EpochCheckpoints, TrainParams, fingerprint, pick_device, set_seed, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainCamParams(TrainParams):
    """The shared training settings plus the width of the 3x3 head (0: no head)."""

    head_channels: int = 512


def run(
    manifest_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    params: TrainCamParams,
) -> None:
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
    augment = Augment(params.crop_size, params.scale_range, True, params.jitter)
    dataset = ImageLabels(records, len(manifest.classes), augment, params.seed)

    def loss_fn(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.multilabel_soft_margin_loss(model(images).float(), targets)

    checkpoints = EpochCheckpoints(state_dir, fingerprint(asdict(params), Path(manifest_path)))
    train(model, dataset, loss_fn, params, checkpoints, device, "train-cam")
    save_torch(
        out,
        cam_checkpoint(
            model.cpu(),
            params.backbone,
            params.output_stride,
            params.head_channels,
            list(manifest.classes),
        ),
    )
    log.info("wrote %s", out)

"""Stage: train the segmentation network on pseudo-masks (weak) or on the ground-truth
masks of the same images (full: the upper bound every run reports against)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss.atomic import save_torch
from wsss.data.datasets import Augment, ImageMasks
from wsss.data.manifest import IGNORE, DatasetError, Manifest
from wsss.models.backbones import build_backbone
from wsss.models.deeplab import SegNet, seg_checkpoint
from wsss.stages.eval_labels import find_labels
from wsss.training import EpochCheckpoints, TrainParams, fingerprint, pick_device, set_seed, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSegParams(TrainParams):
    """The shared training settings plus the head (see :mod:`wsss.models.deeplab`) and the
    supervision: ``weak`` (pseudo-masks) or ``full`` (ground-truth masks)."""

    output_stride: int = 8
    epochs: int = 30
    supervision: str = "weak"
    head: str = "psa"
    head_channels: int = 512
    head_dilation: int = 12


def run(
    manifest_path: str | os.PathLike[str],
    label_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    params: TrainSegParams,
) -> None:
    """Train on split ``params.split``: with pseudo-masks from ``label_dirs`` (weak) or the
    manifest's masks (full); write the model to ``out``."""
    manifest = Manifest.load(manifest_path)
    records = manifest.split(params.split)
    if params.supervision == "full":
        masks = {r.id: r.mask for r in records if r.mask}
    elif params.supervision == "weak":
        masks = {k: str(v) for k, v in find_labels(label_dirs).items()}
    else:
        raise ValueError(f"supervision must be 'weak' or 'full', not '{params.supervision}'")
    missing = [r.id for r in records if r.id not in masks]
    if missing:
        kind = "mask" if params.supervision == "full" else "pseudo-mask"
        raise DatasetError(
            f"{len(missing)} images of '{params.split}' have no {kind}: {missing[:5]}"
        )
    set_seed(params.seed)
    device = pick_device(params.device)
    backbone = build_backbone(params.backbone, params.output_stride, params.weights)
    model = SegNet(
        backbone, manifest.num_labels, params.head, params.head_channels, params.head_dilation
    ).to(device)
    augment = Augment(params.crop_size, params.scale_range, True, params.jitter)
    dataset = ImageMasks(records, masks, augment, params.seed)

    def loss_fn(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images).float(), targets, ignore_index=IGNORE)

    label_files = [Path(masks[r.id]) for r in records]
    checkpoints = EpochCheckpoints(
        state_dir, fingerprint(asdict(params), Path(manifest_path), *label_files)
    )
    train(model, dataset, loss_fn, params, checkpoints, device, f"train-seg ({params.supervision})")
    arch = {
        k: getattr(params, k)
        for k in (
            "backbone",
            "output_stride",
            "head",
            "head_channels",
            "head_dilation",
            "supervision",
        )
    }
    save_torch(out, seg_checkpoint(model.cpu(), arch, manifest.label_names))
    log.info("wrote %s", out)

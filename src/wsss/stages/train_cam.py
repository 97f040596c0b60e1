"""Stage: train the CAM network on image-level labels (multi-label soft-margin loss on the
globally average-pooled logits; with the HFPL add-on, importance sampling and the feature
similarity loss as well, :mod:`wsss.hfpl`)."""

from __future__ import annotations

from dataclasses import dataclass

from wsss.settings import ClassifierParams, TrainIO, TrainParams
from wsss.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class Params(TrainParams, ClassifierParams):
    """The shared training settings, the HFPL add-on's, and the width of the 3x3 head
    (0: no head)."""

    head_channels: int = arg(512, "width of the 3x3 head before the classifier (0: none)")


def run(io: TrainIO, params: Params) -> None:
    """Train on the labelled images of ``io.split``; write the model file ``io.out``."""
    import torch.nn.functional as F

    from wsss import held_out
    from wsss.data.datasets import ImageLabels
    from wsss.data.manifest import DatasetError, Manifest
    from wsss.hfpl import AddOn, classifier_loss
    from wsss.models.cam import CAMNet
    from wsss.training import train_network

    manifest = Manifest.load(io.manifest)
    records = [r for r in manifest.split(io.split) if r.labels]
    if not records:
        raise DatasetError(f"{io.manifest}: no image of split '{io.split}' has a label")
    num_classes = len(manifest.classes)
    addon = AddOn.of(params, manifest.has_background)

    def loss(model: CAMNet, images, targets):
        if addon.active:
            return classifier_loss(model.logit_maps(images), images, targets, addon)
        return F.multilabel_soft_margin_loss(model(images).float(), targets)

    train_network(
        "train-cam",
        io,
        params,
        build=lambda backbone: CAMNet(backbone, num_classes, params.head_channels),
        dataset=lambda augment: ImageLabels(records, num_classes, augment, params.seed),
        loss=loss,
        kind="cam",
        arch={"head_channels": params.head_channels},
        label_names=manifest.classes,
        held_out=lambda: (
            held_out.classifier(manifest.split(io.held_out), records, num_classes, params.crop_size)
            if io.held_out
            else None
        ),
        config_key="cam.train",
    )


STAGE = Stage("train-cam", "train the CAM network on image-level labels", TrainIO, Params, run)

"""Stage: train WS-FCN, the single-stage network (:mod:`wsss.models.wsfcn`), end to end on
image-level labels: the classification loss of nGWP + focal penalty for the first
``classification_epochs`` epochs, then the mask loss against the PAMR-refined pseudo ground
truth as well (:func:`wsss.methods.single_stage.single_stage_loss`). With the HFPL add-on
(:mod:`wsss.methods.hfpl`), importance sampling and the feature similarity loss act on the
classification branch's logit maps, as they do on the CAM network's.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsss.core.settings import ClassifierParams, TrainIO, TrainParams
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class Params(TrainParams, ClassifierParams):
    """The shared training settings at the WS-FCN reference (crop 321 from random resized
    crops of 90-100 % of the image, batch 16, 30 epochs of which 7 classification only,
    constant lr 1e-3), its two modules, the gate and the focal penalty, and the HFPL add-on
    on the classification branch."""

    epochs: int = arg(30, "training epochs", minimum=1)
    batch_size: int = arg(16, "images per step", minimum=2)
    crop_size: int = arg(321, "side of the square training crop (pixels)", minimum=32)
    lr: float = arg(0.001, "base learning rate (pretrained weights)", above=0)
    poly_power: float = arg(
        0.0,
        "poly schedule power: lr * (1 - step / steps) ** power (0: constant, the reference's)",
        minimum=0,
    )
    crop_area: tuple[float, float] = arg(
        (0.9, 1.0),
        "random resized crops covering this share of the image's area, resized to "
        "crop_size, never padded (the reference's); (0, 0): rescale by scale_range and pad "
        "as the other networks do",
        items={"minimum": 0, "maximum": 1},
    )
    classification_epochs: int = arg(
        7, "first epochs that train the classification loss only (no mask loss)", minimum=0
    )
    context: bool = arg(True, "flexible context aggregation (FCA) instead of the baseline's ASPP")
    fusion: bool = arg(
        True, "semantically consistent feature fusion (SF2) instead of the baseline's decoder"
    )
    width: int = arg(256, "channels of the context module, the decoder and the head", minimum=1)
    gate_psi: float = arg(
        0.3, "stochastic gate: share of the shallow features", minimum=0, maximum=1
    )
    focal_lambda: float = arg(
        0.01, "focal mask penalty: lambda in log(lambda + mean mask)", above=0
    )
    focal_p: float = arg(3.0, "focal mask penalty: power p of (1 - mean mask)", minimum=0)

    def augmentation(self):
        """Random resized crops (``crop_area``) that never pad, or, with (0, 0), the padded
        crops of the other networks: without a background class, padding is a region that
        some labelled class must take in the pooling, the pseudo ground truth and the loss."""
        from wsss.data.datasets import Augment

        area = None if max(self.crop_area) <= 0 else self.crop_area
        if area is not None and not 0 < area[0] <= area[1] <= 1:
            raise ValueError(f"crop_area must satisfy 0 < a <= b <= 1, not {list(area)}")
        return Augment(self.crop_size, self.scale_range, True, self.jitter, area)


def run(io: TrainIO, params: Params) -> None:
    """Train on the labelled images of ``io.split``; write the model file ``io.out``."""
    from wsss.data.datasets import ImageLabels
    from wsss.data.manifest import DatasetError, Manifest
    from wsss.methods.hfpl import AddOn
    from wsss.methods.single_stage import wsfcn_loss
    from wsss.models.wsfcn import WSFCN
    from wsss.training import held_out
    from wsss.training.loop import TrainingSpec, train_network

    if not 0 <= params.classification_epochs < params.epochs:
        raise ValueError(
            f"classification_epochs must lie in 0..{params.epochs - 1} (epochs - 1), not "
            f"{params.classification_epochs}: the mask loss would never train"
        )
    manifest = Manifest.load(io.manifest)
    records = [r for r in manifest.split(io.split) if r.labels]
    if not records:
        raise DatasetError(f"{io.manifest}: no image of split '{io.split}' has a label")
    num_classes = len(manifest.classes)
    background = manifest.has_background
    addon = AddOn.of(params, background)
    arch = {
        "background": background,
        "context": params.context,
        "fusion": params.fusion,
        "width": params.width,
        "gate_psi": params.gate_psi,
        "focal_lambda": params.focal_lambda,
        "focal_p": params.focal_p,
    }

    def build(backbone) -> WSFCN:
        return WSFCN(backbone, num_classes, backbone_name=params.backbone, **arch)

    def foreground(model: WSFCN, images):
        """The masks of the classes [B, C, h, w] (the held-out border check)."""
        return model(images).masks[:, int(background) :]

    train_network(
        TrainingSpec(
            name="train-wsfcn",
            build=build,
            dataset=lambda augment: ImageLabels(records, num_classes, augment, params.seed),
            loss=lambda model, images, labels: wsfcn_loss(
                model(images), images, labels, True, addon
            ),
            initial_loss=lambda model, images, labels: wsfcn_loss(
                model(images), images, labels, False, addon
            ),
            initial_loss_epochs=params.classification_epochs,
            health_loss="loss_classification",
            kind="wsfcn",
            arch=arch,
            label_names=manifest.label_names,
            held_out=lambda: (
                held_out.classifier(
                    manifest.split(io.held_out),
                    records,
                    num_classes,
                    params.crop_size,
                    advice_prefix="wsfcn.train",
                    logits=lambda model, images: model(images).scores,
                    maps=foreground,
                )
                if io.held_out
                else None
            ),
            config_key="wsfcn.train",
            augment=params.augmentation(),
        ),
        io,
        params,
    )


STAGE = Stage(
    "train-wsfcn",
    "train WS-FCN end to end on image-level labels",
    TrainIO,
    Params,
    run,
    section="wsfcn.train",
)

"""Stage: train the CAM network on image-level labels (multi-label soft-margin loss on the
globally average-pooled logits; with the HFPL add-on, importance sampling and the feature
similarity loss as well, :mod:`wsss.methods.hfpl`). Patch learning, its explicit multi-granularity
variant and the stages of progressive patch learning (:mod:`wsss.models.cam`) are settings
of the same stage; a progressive stage starts from the previous stage's model (``--init``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import ClassifierParams, TrainIO, TrainParams
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class Params(TrainParams, ClassifierParams):
    """The shared training settings, the HFPL add-on's, and the width of the 3x3 head
    (0: no head)."""

    head_channels: int = arg(
        512, "width of the 3x3 head before the classifier (0: none)", minimum=0
    )
    patches: int = arg(1, "patch learning: k x k patches while training (1: none)", minimum=1)
    patch_level: str = arg(
        "head",
        "where patch learning splits: before the head, or before the backbone's last level",
        choices=("head", "backbone"),
    )
    patch_fusion: tuple[int, ...] = arg(
        (),
        "explicit multi-granularity patch learning: patches per side of each branch",
        items={"minimum": 1},
    )


@dataclass(frozen=True, kw_only=True)
class IO(TrainIO):
    """A training's files, and the model file a progressive stage starts from."""

    init: Path | None = arg(
        None, "model file of the previous progressive stage to start from (none: ImageNet)"
    )


def run(io: IO, params: Params) -> None:
    """Train on the labelled images of ``io.split``; write the model file ``io.out``."""
    import torch.nn.functional as F

    from wsss.data.datasets import ImageLabels
    from wsss.data.manifest import DatasetError, Manifest
    from wsss.methods.hfpl import AddOn, classifier_loss
    from wsss.models.cam import CAMNet
    from wsss.training import held_out
    from wsss.training.loop import TrainingSpec, train_network

    manifest = Manifest.load(io.manifest)
    records = [r for r in manifest.split(io.split) if r.labels]
    if not records:
        raise DatasetError(f"{io.manifest}: no image of split '{io.split}' has a label")
    num_classes = len(manifest.classes)
    addon = AddOn.of(params, manifest.has_background)

    def build(backbone) -> CAMNet:
        model = CAMNet(
            backbone,
            num_classes,
            params.head_channels,
            params.patches,
            params.patch_level,
            params.patch_fusion,
        )
        if io.init is not None:
            start_from(model, io.init, manifest.classes)
        return model

    def loss(model: CAMNet, images, targets):
        if addon.active:
            return classifier_loss(model.logit_maps(images), images, targets, addon)
        return F.multilabel_soft_margin_loss(model(images).float(), targets)

    train_network(
        TrainingSpec(
            name="train-cam",
            build=build,
            dataset=lambda augment: ImageLabels(records, num_classes, augment, params.seed),
            loss=loss,
            kind="cam",
            arch={
                "head_channels": params.head_channels,
                "patches": params.patches,
                "patch_level": params.patch_level,
                "fusion": list(params.patch_fusion),
            },
            label_names=manifest.classes,
            held_out=lambda: (
                held_out.classifier(
                    manifest.split(io.held_out), records, num_classes, params.crop_size
                )
                if io.held_out
                else None
            ),
            config_key="cam.train",
            inputs=[io.init] if io.init is not None else [],
        ),
        io,
        params,
    )


def start_from(model, path: Path, classes) -> None:
    """Load the weights of a previous progressive stage (a CAM model file) into ``model``."""
    from wsss.models.registry import ModelFileError, load_model

    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: the model of the previous progressive stage is missing; train that "
            "stage first (the workflow does it in order)"
        )
    previous = load_model(path, "cam")
    if list(previous.label_names) != list(classes):
        raise ModelFileError(
            f"{path}: trained on the classes {previous.label_names}, not on {list(classes)}"
        )
    try:
        model.load_state_dict(previous.model.state_dict())
    except RuntimeError as err:
        raise ModelFileError(
            f"{path}: its weights do not fit this stage's network (arch {previous.arch}): "
            f"{str(err).splitlines()[0]}"
        ) from err


STAGE = Stage(
    "train-cam", "train the CAM network on image-level labels", IO, Params, run, section="cam.train"
)

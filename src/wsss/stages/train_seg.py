"""Stage: train the segmentation network on pseudo-masks (weak) or on the ground-truth
masks of the same images (full: the upper bound every run reports against)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import TrainIO, TrainParams
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO(TrainIO):
    labels: tuple[Path, ...] = arg((), "directories of pseudo-mask PNGs (weak supervision)")


@dataclass(frozen=True, kw_only=True)
class Params(TrainParams):
    """The shared training settings plus the head (see :mod:`wsss.models.deeplab`) and the
    supervision: ``weak`` (pseudo-masks) or ``full`` (ground-truth masks)."""

    output_stride: int = arg(8, "backbone output stride (pixels)", choices=(8, 16))
    epochs: int = arg(30, "training epochs", minimum=1)
    supervision: str = arg(
        "weak",
        "weak: pseudo-masks; full: the ground truth",
        choices=("weak", "full"),
        configurable=False,
    )
    head: str = arg("psa", "segmentation head", choices=("psa", "largefov", "aspp"))
    head_channels: int = arg(512, "width of the psa head", minimum=1)
    head_dilation: int = arg(12, "dilation of the head's 3x3 convolutions", minimum=1)


def run(io: IO, params: Params) -> None:
    """Train on ``io.split``: with pseudo-masks from ``io.labels`` (weak) or the manifest's
    masks (full); write the model file ``io.out``."""
    import torch.nn.functional as F

    from wsss.data.datasets import ImageMasks
    from wsss.data.manifest import IGNORE, DatasetError, Manifest
    from wsss.jobs import find_labels
    from wsss.models.deeplab import SegNet
    from wsss.training import held_out
    from wsss.training.loop import TrainingSpec, train_network

    manifest = Manifest.load(io.manifest)
    records = manifest.split(io.split)
    if params.supervision == "full":
        masks = {r.id: r.mask for r in records if r.mask}
    elif params.supervision == "weak":
        masks = {k: str(v) for k, v in find_labels(io.labels).items()}
    else:
        raise ValueError(f"supervision must be 'weak' or 'full', not '{params.supervision}'")
    missing = [r.id for r in records if r.id not in masks]
    if missing:
        kind = "mask" if params.supervision == "full" else "pseudo-mask"
        raise DatasetError(f"{len(missing)} images of '{io.split}' have no {kind}: {missing[:5]}")
    arch = {k: getattr(params, k) for k in ("head", "head_channels", "head_dilation")}
    train_network(
        TrainingSpec(
            name=f"train-seg ({params.supervision})",
            build=lambda backbone: SegNet(backbone, manifest.num_labels, **arch),
            dataset=lambda augment: ImageMasks(records, masks, augment, params.seed),
            loss=lambda model, images, targets: F.cross_entropy(
                model(images).float(), targets, ignore_index=IGNORE
            ),
            kind="seg",
            arch={**arch, "supervision": params.supervision},
            label_names=manifest.label_names,
            inputs=[Path(masks[r.id]) for r in records],
            held_out=lambda: (
                held_out.segmentation(
                    manifest.split(io.held_out), manifest.label_names, params.crop_size
                )
                if io.held_out
                else None
            ),
            config_key="seg.train",
        ),
        io,
        params,
    )


STAGE = Stage("train-seg", "train the segmentation network", IO, Params, run, section="seg.train")

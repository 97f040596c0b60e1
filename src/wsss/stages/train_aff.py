"""Stage: train AffinityNet on the affinity labels (class-agnostic pair loss, eq. 10)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import TrainIO, TrainParams
from wsss.core.stage import Stage, arg

GRID = 8  # stride of the affinity features (wsss.methods.randomwalk.GRID)


@dataclass(frozen=True, kw_only=True)
class IO(TrainIO):
    labels: tuple[Path, ...] = arg(help="directories of affinity-label PNGs")


@dataclass(frozen=True, kw_only=True)
class Params(TrainParams):
    """Reference AffinityNet training: batch 8, 8 epochs, crop 448, no rescaling, output
    stride 8."""

    output_stride: int = arg(8, "backbone output stride (pixels)", choices=(8, 16))
    epochs: int = arg(8, "training epochs", minimum=1)
    crop_size: int = arg(
        448, "side of the square training crop (pixels; a multiple of 8)", minimum=32, multiple_of=8
    )
    scale_range: tuple[float, float] = arg(
        (1.0, 1.0),
        "random rescale: long side = crop_size x a factor in this range",
        items={"exclusiveMinimum": 0},
    )
    widths: str = arg(
        "code",
        "feature widths: code (64/128/256 -> 448) or paper (128/256/512 -> 896)",
        choices=("code", "paper"),
    )
    radius: int = arg(5, "pairs at grid distance below this radius", minimum=2)


def run(io: IO, params: Params) -> None:
    """Train on the images of ``io.split`` with the affinity labels in ``io.labels``."""
    from wsss.data.datasets import ImageMasks
    from wsss.data.manifest import DatasetError, Manifest
    from wsss.jobs import find_labels
    from wsss.models.affinitynet import AffinityNet, affinity_loss
    from wsss.training import held_out
    from wsss.training.loop import TrainingSpec, train_network

    if params.crop_size % GRID:
        raise ValueError(f"crop_size must be a multiple of {GRID}, not {params.crop_size}")
    manifest = Manifest.load(io.manifest)
    labels = {k: str(v) for k, v in find_labels(io.labels).items()}
    records = manifest.split(io.split)
    missing = [r.id for r in records if r.id not in labels]
    if missing:
        raise DatasetError(f"{len(missing)} images have no affinity labels: {missing[:5]}")

    def loss(model: AffinityNet, images, masks):  # noqa: ANN001, ANN202 - tensors
        features = model(images)
        grid = masks[:, GRID // 2 :: GRID, GRID // 2 :: GRID]  # label at each cell's centre
        value, _ = affinity_loss(
            features,
            grid[:, : features.shape[2], : features.shape[3]],
            params.radius,
            manifest.has_background,
        )
        return value

    train_network(
        TrainingSpec(
            name="train-aff",
            build=lambda backbone: AffinityNet(backbone, params.widths),
            dataset=lambda augment: ImageMasks(records, labels, augment, params.seed),
            loss=loss,
            kind="affinity",
            arch={"widths": params.widths},
            label_names=manifest.label_names,
            inputs=[Path(labels[r.id]) for r in records],  # their contents, not only names
            held_out=lambda: (
                held_out.affinity(
                    manifest.split(io.held_out), params.radius, params.crop_size, GRID
                )
                if io.held_out
                else None
            ),
            config_key="affinity.train",
        ),
        io,
        params,
    )


STAGE = Stage(
    "train-aff",
    "train AffinityNet on the affinity labels",
    IO,
    Params,
    run,
    section="affinity.train",
)

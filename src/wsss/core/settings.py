"""Settings that several stages share (frozen dataclasses; stages extend them).

Defaults are the reference ones (the AffinityNet code on PASCAL VOC); the config's
sections override them, and ``wsss <stage> --help`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.stage import arg

# The backbones wsss.models.backbones.build_backbone builds (its BUILDERS, one per name), and
# whether their ImageNet weights ship in an installed package (``weights: imagenet``); the
# others need the path of a weights file. A new backbone: a builder there, a name here.
BACKBONES: dict[str, bool] = {
    "lite0": True,
    "resnet50": False,
    "resnet101": False,
    "resnet38d": False,
}
# Pixels of the largest image a network runs on at inference (a 6000 x 4000 photo at one
# scale needs about 9 GB on a CPU with Lite0; 4 megapixels about 1.6 GB).
MAX_PIXELS = 4_000_000
# Autocast types on CUDA (float16 for GPUs without bfloat16).
AMP_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class AmpParams:
    """Mixed precision on CUDA, for every stage that runs a network: bfloat16, or float16
    for GPUs without bfloat16; off on the CPU whatever it says."""

    amp: bool = arg(True, "mixed precision on CUDA (amp_dtype)")
    amp_dtype: str = arg(
        "bfloat16",
        "autocast type with amp on CUDA: bfloat16, or float16 for GPUs without bfloat16 "
        "(V100, T4; a training then scales its loss)",
        choices=AMP_DTYPES,
    )


@dataclass(frozen=True, kw_only=True)
class TrainParams(AmpParams):
    """What every network training takes: SGD, poly schedule, learning-rate multipliers
    1 / 2 / 10 / 20 (pretrained weights / biases, new weights / biases), 5e-4 decay (the
    reference), and two guards the reference lacks: a one-epoch linear warm-up and the
    gradient norm clipped at 5, so that a new dataset does not diverge in its first steps."""

    backbone: str = arg("lite0", "backbone network", choices=tuple(BACKBONES))
    weights: str = arg(
        "imagenet", "backbone weights: imagenet (offline, lite0 only) or a state-dict path"
    )
    output_stride: int = arg(16, "backbone output stride (pixels)", choices=(8, 16))
    epochs: int = arg(15, "training epochs", minimum=1)
    batch_size: int = arg(8, "images per step", minimum=1)
    crop_size: int = arg(448, "side of the square training crop (pixels)", minimum=32)
    scale_range: tuple[float, float] = arg(
        (0.5, 1.5),
        "random rescale: the long side becomes crop_size times a factor in this range",
        items={"exclusiveMinimum": 0},
    )
    jitter: float = arg(
        0.3, "colour jitter strength (brightness, contrast, saturation)", minimum=0, maximum=1
    )
    lr: float = arg(0.01, "base learning rate (pretrained weights)", above=0)
    lr_multipliers: tuple[float, float, float, float] = arg(
        (1.0, 2.0, 10.0, 20.0),
        "learning-rate multipliers: pretrained weights, pretrained biases, new weights, new biases",
        items={"minimum": 0},
    )
    weight_decay: float = arg(5e-4, "weight decay (weights only)", minimum=0)
    momentum: float = arg(0.9, "SGD momentum", minimum=0, maximum=1)
    poly_power: float = arg(0.9, "poly schedule power: lr * (1 - step / steps) ** power", minimum=0)
    freeze_bn: bool = arg(True, "freeze the backbone's batch norm")
    seed: int = arg(0, "random seed (weights of new layers, augmentation, batch order)")
    num_workers: int = arg(2, "data-loading worker processes", minimum=0)
    loader_start: str = arg(
        "forkserver",
        "how loader workers start each epoch: forkserver (forked from a small server process "
        "with torch loaded) or fork (copies of the training process, whose memory is then "
        "copied page by page as the training writes it)",
        choices=("forkserver", "fork"),
    )
    channels_last: bool = arg(
        True,
        "train in the channels-last memory layout where it is faster: on CUDA and on CPUs "
        "whose torch kernels use AVX-512 (NCHW elsewhere; the same arithmetic summed in "
        "another order)",
    )
    warmup_epochs: float = arg(1.0, "linear learning-rate warm-up (epochs; 0: none)", minimum=0)
    clip_norm: float = arg(5.0, "clip the gradient norm to this (0: no clipping)", minimum=0)
    health: str = arg(
        "stop",
        "a training that fails its health checks: stop the run, warn, or ignore it",
        choices=("stop", "warn", "ignore"),
    )
    health_margin: float = arg(
        5.0, "points by which the final held-out score must beat its trivial prior"
    )


@dataclass(frozen=True, kw_only=True)
class ClassifierParams:
    """The HFPL add-on of every classifier (wsss.methods.hfpl), off by default: importance
    sampling mixed with global average pooling, a feature similarity loss, and the
    posterior both use. Reference when on: K = 10, 0.8 GAP + 0.2 sampling, mu 2.5, sigma 40
    image pixels (the reference's 5 feature pixels of a stride-8 network)."""

    posterior: str = arg(
        "binomial",
        "class posterior of the add-on: binomial (sigmoid per class, the paper) or "
        "multinomial (softmax over the classes: this project's stand-in for the softmax-style "
        "posterior the paper replaces, not a published loss)",
        choices=("binomial", "multinomial"),
    )
    sampling_weight: float = arg(
        0.0,
        "weight w of the importance-sampling loss: (1 - w) GAP + w sampling (0: off)",
        minimum=0,
        maximum=1,
    )
    samples: int = arg(10, "positions K drawn per image and class (importance sampling)", minimum=1)
    similarity_weight: float = arg(0.0, "weight of the feature similarity loss (0: off)", minimum=0)
    similarity_mu: float = arg(2.5, "feature similarity loss: colour-distance offset mu")
    similarity_sigma: float = arg(
        40.0,
        "feature similarity loss: spatial Gaussian sigma in image pixels, divided by the "
        "network's stride (crop size / feature grid size) in the loss; the reference's 5 "
        "feature pixels at stride 8",
        above=0,
    )
    similarity_radius: float = arg(
        0.0,
        "feature similarity loss: pairs at most this far apart (image pixels; 0: 3 sigma)",
        minimum=0,
    )
    similarity_no_class: str = arg(
        "always",
        "feature similarity loss: its 'none of the present classes' channel y_0 (the "
        "reference's background map): always, or with_background (only on a dataset with a "
        "background class; without one, the present classes' maps alone)",
        choices=("always", "with_background"),
    )


@dataclass(frozen=True, kw_only=True)
class CRFParams:
    """Dense CRF: 10 iterations, Gaussian sxy 3 / compat 3, bilateral sxy 80 / srgb 13 /
    compat 10 (pixel and 0-255 colour units), the reference values."""

    crf_iterations: int = arg(10, "dense CRF mean-field iterations", minimum=0)
    crf_gaussian_sxy: float = arg(3.0, "dense CRF Gaussian kernel width (pixels)", above=0)
    crf_gaussian_compat: float = arg(3.0, "dense CRF Gaussian kernel weight", minimum=0)
    crf_bilateral_sxy: float = arg(80.0, "dense CRF bilateral kernel width (pixels)", above=0)
    crf_bilateral_srgb: float = arg(13.0, "dense CRF bilateral colour width (0-255)", above=0)
    crf_bilateral_compat: float = arg(10.0, "dense CRF bilateral kernel weight", minimum=0)


@dataclass(frozen=True, kw_only=True)
class InferParams(CRFParams, AmpParams):
    """Segmentation at test time, one image at a time: the reference scales and flip
    (0.5 .. 1.5, < 2 mIoU gain); dCRF off."""

    scales: tuple[float, ...] = arg(
        (0.5, 0.75, 1.0, 1.25, 1.5), "test-time scales", items={"exclusiveMinimum": 0}, min_items=1
    )
    flip: bool = arg(True, "also segment the mirrored image")
    crf: bool = arg(False, "refine the prediction with a dense CRF")
    max_pixels: int = arg(
        MAX_PIXELS,
        "largest image (pixels) the network sees; larger ones are scaled down",
        minimum=0,
    )


@dataclass(frozen=True, kw_only=True)
class SegmentParams(InferParams):
    """Test-time settings of a segmentation network, which segments padded batches."""

    batch_size: int = arg(4, "images per batch", minimum=1)


DEVICE_HELP = "auto | cpu | cuda[:N] (auto takes a GPU when one is visible)"
MANIFEST_HELP = "dataset manifest (JSON) written by wsss prepare"


@dataclass(frozen=True, kw_only=True)
class ShardIO:
    """What a per-image stage reads to pick its images: one shard of a split."""

    manifest: Path = arg(help=MANIFEST_HELP)
    split: str = arg("train", "split whose images are processed")
    shard: int = arg(0, "shard to process (0-based)")
    num_shards: int = arg(1, "number of shards the split is cut into")


@dataclass(frozen=True, kw_only=True)
class TrainIO:
    """What a training stage reads and writes."""

    manifest: Path = arg(help=MANIFEST_HELP)
    out: Path = arg(help="model file to write")
    state_dir: Path = arg(help="directory of the per-epoch training state (resume)")
    split: str = arg("train", "split to train on")
    held_out: str = arg(
        "val", "split whose images score the training's health after every epoch ('': none)"
    )
    device: str = arg("auto", DEVICE_HELP)
    snapshots: tuple[int, ...] = arg(
        (), "also write the model file after these epochs, as <out>-epoch<K>.pt (learning curves)"
    )


@dataclass(frozen=True, kw_only=True)
class MapsShardIO(ShardIO):
    """A per-image stage that reads class maps (CAMs or refined maps) of its shard."""

    maps: tuple[Path, ...] = arg(help="class-map shard files (HDF5): CAMs or refined maps")


@dataclass(frozen=True, kw_only=True)
class ScoreIO:
    """What an evaluation reads and writes."""

    manifest: Path = arg(help=MANIFEST_HELP)
    out: Path = arg(help="metrics JSON to write")
    stage: str = arg(help="step name recorded in the metrics (cam, rw, pseudo, seg, ...)")
    split: str = arg("train", "split to score (its images with masks)")


@dataclass(frozen=True, kw_only=True)
class MapsToLabelsIO(MapsShardIO):
    """A per-image stage that turns class maps into label maps (one PNG per image)."""

    out: Path = arg(help="directory of label-map PNGs to write (one per image)")


@dataclass(frozen=True, kw_only=True)
class NetShardIO(ShardIO):
    """A per-image stage that runs a trained network (its model file) on a device."""

    model: Path = arg(help="model file of the network the stage runs (wsss inspect FILE)")
    device: str = arg("auto", DEVICE_HELP)


@dataclass(frozen=True, kw_only=True)
class SegmentShardIO(NetShardIO):
    """A stage that segments one shard of a split with a network, one PNG per image."""

    split: str = arg("val", "split whose images are segmented")
    out: Path = arg(help="directory of label PNGs to write")
    present_only: bool = arg(
        False,
        "each pixel takes one of the image's labelled classes or the background (for the "
        "training split, whose image labels are known)",
    )

"""Stage: multi-scale + flip CAM inference for one shard of a split, into HDF5."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.settings import DEVICE_HELP, ShardIO
from wsss.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO(ShardIO):
    model: Path = arg(help="CAM model file (train-cam)")
    out: Path = arg(help="CAM shard file (HDF5) to write")
    device: str = arg("auto", DEVICE_HELP)


@dataclass(frozen=True, kw_only=True)
class Params:
    """Inference settings; the scales are those of the AffinityNet reference code."""

    scales: tuple[float, ...] = arg((1.0, 0.5, 1.5, 2.0), "image scales averaged")
    flip: bool = arg(True, "also average the mirrored image")
    amp: bool = arg(True, "mixed precision (bfloat16) on CUDA")


def run(io: IO, params: Params) -> None:
    """Write the CAMs of the present classes of every image of one shard to ``io.out``."""
    import logging

    import numpy as np
    import torch

    from wsss.common import pick_device, progress, shard_records
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import Manifest, read_image
    from wsss.inference import multiscale_cams
    from wsss.models.registry import load_model
    from wsss.store import MapsWriter

    manifest = Manifest.load(io.manifest)
    records = shard_records(manifest.split(io.split), io.shard, io.num_shards)
    device = pick_device(io.device)
    model = load_model(io.model, "cam", device).model
    logging.getLogger(__name__).info(
        "CAMs of %d images (shard %d/%d) on %s (%d threads)",
        len(records),
        io.shard,
        io.num_shards,
        device,
        torch.get_num_threads(),
    )
    with MapsWriter(
        io.out, "cam", manifest.label_names, manifest.has_background, io.shard, io.num_shards
    ) as writer:
        for rec in progress(records, f"infer-cam shard {io.shard}", "img"):
            image = to_tensor(read_image(rec.image))
            cams = multiscale_cams(model, image, rec.labels, params.scales, params.flip, params.amp)
            writer.add(rec.id, cams.cpu().numpy().astype(np.float32), rec.labels)


STAGE = Stage("infer-cam", "CAMs of one shard of a split into HDF5", IO, Params, run)

"""Stage: multi-scale + flip CAM inference for one shard of a split, into HDF5.

The CAM model must have been trained on the classes of the manifest; the shard records
the model's fingerprint (:mod:`wsss.data.store`). Maps that are not finite stop the stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import MAX_PIXELS, AmpParams, NetShardIO
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO(NetShardIO):
    out: Path = arg(help="CAM shard file (HDF5) to write")


@dataclass(frozen=True, kw_only=True)
class Params(AmpParams):
    """Inference settings; the scales are those of the AffinityNet reference code."""

    scales: tuple[float, ...] = arg(
        (1.0, 0.5, 1.5, 2.0), "image scales averaged", items={"exclusiveMinimum": 0}, min_items=1
    )
    flip: bool = arg(True, "also average the mirrored image")
    max_pixels: int = arg(
        MAX_PIXELS,
        "largest image (pixels) the network sees; larger ones are scaled down",
        minimum=0,
    )


def run(io: IO, params: Params) -> None:
    """Write the CAMs of the present classes of every image of one shard to ``io.out``."""
    import numpy as np

    from wsss.core.runtime import amp_of, progress
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import read_image
    from wsss.data.store import MapsWriter
    from wsss.jobs import shard_job
    from wsss.methods.inference import check_scales, multiscale_cams
    from wsss.models.registry import check_labels, load_model

    check_scales(params.scales)
    job = shard_job(io)
    manifest = job.manifest
    loaded = load_model(io.model, "cam", job.device)
    check_labels(io.model, loaded.label_names, manifest.classes, f"the manifest {io.manifest}")
    with MapsWriter(
        io.out,
        "cam",
        manifest.label_names,
        manifest.has_background,
        io.shard,
        io.num_shards,
        model=loaded.fingerprint,
    ) as writer:
        for rec in progress(job.records, f"infer-cam shard {io.shard}", "img"):
            image = to_tensor(read_image(rec.image))
            cams = multiscale_cams(
                loaded.model,
                image,
                rec.labels,
                params.scales,
                params.flip,
                amp_of(params),
                params.max_pixels,
                rec.image,
            )
            writer.add(rec.id, cams.cpu().numpy().astype(np.float32), rec.labels)


STAGE = Stage(
    "infer-cam", "CAMs of one shard of a split into HDF5", IO, Params, run, section="cam.infer"
)

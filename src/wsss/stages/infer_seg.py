"""Stage: segment the images of one shard of a split with a trained network (multi-scale
+ flip, optional dCRF; :func:`wsss.inference.segment`), one palette PNG per image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.settings import NetShardIO, SegmentParams
from wsss.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO(NetShardIO):
    split: str = arg("val", "split whose images are segmented")
    out: Path = arg(help="directory of label PNGs to write")


def run(io: IO, params: SegmentParams) -> None:
    """Write ``io.out/<id>.png`` for every image of one shard of ``io.split``."""
    import logging

    from wsss.atomic import atomic_dir
    from wsss.common import progress, shard_job
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import read_image
    from wsss.data.palette import write_label_png
    from wsss.inference import labels_from_probs, segment

    job = shard_job(io, "seg")
    model, records = job.model, job.records
    with atomic_dir(io.out) as tmp:
        batches = [
            records[i : i + params.batch_size] for i in range(0, len(records), params.batch_size)
        ]
        for batch in progress(batches, f"segment shard {io.shard}", "batch"):
            images = [read_image(r.image) for r in batch]
            probs = segment(
                model,
                [to_tensor(im) for im in images],
                params.scales,
                params.flip,
                params.amp,
                params.max_pixels,
                [r.image for r in batch],
            )
            for rec, image, p in zip(batch, images, probs):
                write_label_png(tmp, rec.id, labels_from_probs(image, p, params))
    logging.getLogger(__name__).info("wrote %d label maps to %s", len(records), io.out)


STAGE = Stage("infer-seg", "segment one shard of a split", IO, SegmentParams, run)

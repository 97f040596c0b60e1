"""Stage: segment the images of one shard of a split with a trained network, the
segmentation network or WS-FCN (multi-scale + flip, optional dCRF;
:func:`wsss.methods.inference.segment`), one palette PNG per image. ``--present-only`` keeps each
image to its labelled classes (and the background): the masks of the training split, whose
image labels are the supervision, as pseudo-masks. The model must have been trained on the
labels of the manifest; probabilities that are not finite stop the stage."""

from __future__ import annotations

from wsss.core.settings import SegmentParams, SegmentShardIO
from wsss.core.stage import Stage

IO = SegmentShardIO


def run(io: IO, params: SegmentParams) -> None:
    """Write ``io.out/<id>.png`` for every image of one shard of ``io.split``."""
    import logging

    from wsss.core.atomic import atomic_dir
    from wsss.core.runtime import amp_of, progress
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import read_image
    from wsss.data.palette import write_label_png
    from wsss.data.store import require_finite
    from wsss.jobs import shard_job
    from wsss.methods.inference import check_scales, labels_from_probs, segment
    from wsss.models.registry import check_labels, load_model

    check_scales(params.scales)
    job = shard_job(io)
    records, manifest = job.records, job.manifest
    loaded = load_model(io.model, ("seg", "wsfcn"), job.device)
    check_labels(io.model, loaded.label_names, manifest.label_names, f"the manifest {io.manifest}")
    model = loaded.model
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
                amp_of(params),
                params.max_pixels,
                [r.image for r in batch],
            )
            for rec, image, p in zip(batch, images, probs):
                require_finite(p.cpu().numpy(), f"{rec.image}: the class probabilities")
                keep = None
                if io.present_only:  # the background (if any) and the labelled classes
                    keep = [0] * manifest.offset + [manifest.offset + c for c in rec.labels]
                write_label_png(tmp, rec.id, labels_from_probs(image, p, params, keep))
    logging.getLogger(__name__).info("wrote %d label maps to %s", len(records), io.out)


STAGE = Stage(
    "infer-seg", "segment one shard of a split", IO, SegmentParams, run, section="seg.infer"
)

"""Stage: WS-FCN's masks of one shard of a split, as its reference infers them
(:func:`wsss.methods.inference.segment_single_stage`: masks averaged over scales and flips after
the softmax, classes whose image score stays at or below ``score_cut`` dropped, the
background raised to ``bg_power``), one palette PNG per image. ``--present-only`` keeps each
image to its labelled classes (and the background) instead of the score cut: the masks of
the training split, whose image labels are the supervision. The model must have been trained
on the labels of the manifest; probabilities that are not finite stop the stage."""

from __future__ import annotations

from dataclasses import dataclass

from wsss.core.settings import InferParams, SegmentShardIO
from wsss.core.stage import Stage, arg

IO = SegmentShardIO


@dataclass(frozen=True, kw_only=True)
class Params(InferParams):
    """Test-time settings of the reference: scales 1, 0.5, 1.5, 2 with flips, score cut
    0.1, background power 3; one unpadded image at a time, as the reference (no batch
    size: padding would enter the class scores)."""

    scales: tuple[float, ...] = arg(
        (1.0, 0.5, 1.5, 2.0), "test-time scales", items={"exclusiveMinimum": 0}, min_items=1
    )
    score_cut: float = arg(
        0.1,
        "drop the classes whose image score (sigmoid) stays at or below this",
        minimum=0,
        maximum=1,
    )
    bg_power: float = arg(3.0, "raise the averaged background mask to this power", above=0)


def run(io: IO, params: Params) -> None:
    """Write ``io.out/<id>.png`` for every image of one shard of ``io.split``."""
    import logging

    from wsss.core.atomic import atomic_dir
    from wsss.core.runtime import amp_of, progress
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import read_image
    from wsss.data.palette import write_label_png
    from wsss.data.store import require_finite
    from wsss.jobs import shard_job
    from wsss.methods.inference import check_scales, labels_from_probs, segment_single_stage
    from wsss.models.registry import check_labels, load_model

    check_scales(params.scales)
    job = shard_job(io)
    manifest = job.manifest
    loaded = load_model(io.model, "wsfcn", job.device)
    check_labels(io.model, loaded.label_names, manifest.label_names, f"the manifest {io.manifest}")
    with atomic_dir(io.out) as tmp:
        for rec in progress(job.records, f"WS-FCN masks, shard {io.shard}", "image"):
            image = read_image(rec.image)
            probs = segment_single_stage(
                loaded.model,
                to_tensor(image),
                params.scales,
                params.flip,
                amp_of(params),
                params.max_pixels,
                rec.image,
                0.0 if io.present_only else params.score_cut,
                params.bg_power,
            )
            require_finite(probs.cpu().numpy(), f"{rec.image}: the mask probabilities")
            keep = None
            if io.present_only:  # the background (if any) and the labelled classes
                keep = [0] * manifest.offset + [manifest.offset + c for c in rec.labels]
            write_label_png(tmp, rec.id, labels_from_probs(image, probs, params, keep))
    logging.getLogger(__name__).info("wrote %d label maps to %s", len(job.records), io.out)


STAGE = Stage(
    "infer-wsfcn", "WS-FCN's masks of one shard of a split", IO, Params, run, section="wsfcn.infer"
)

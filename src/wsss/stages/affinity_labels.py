"""Stage: affinity labels, the confident regions that supervise AffinityNet (paper 3.2.1;
the rule is in :func:`wsss.methods.label_maps.confident_regions`).

Output: one palette PNG per image (label-map convention, 255 = neutral) in a directory
per shard, at the image resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsss.core.settings import CRFParams, MapsToLabelsIO
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class Params(CRFParams):
    """alpha_low / alpha_high: 4 / 32 in the released code (paper: 4 / 24)."""

    alpha_low: float = arg(
        4.0, "background power that enlarges the background (sure objects)", above=0
    )
    alpha_high: float = arg(
        32.0, "background power that weakens the background (sure background)", above=0
    )
    confidence: float = arg(
        0.7, "without a background class: CRF probability of a sure pixel", minimum=0, maximum=1
    )


def run(io: MapsToLabelsIO, params: Params) -> None:
    """Write ``io.out/<id>.png`` for every image of one shard (the directory atomically)."""
    import logging

    from wsss.core.atomic import atomic_dir
    from wsss.core.runtime import progress
    from wsss.data.manifest import read_image
    from wsss.data.palette import write_label_png
    from wsss.data.store import MapsReader
    from wsss.jobs import shard_job
    from wsss.methods.label_maps import confident_regions

    job = shard_job(io)
    manifest, records = job.manifest, job.records
    with (
        MapsReader(io.maps, kind="cam", label_names=manifest.label_names) as reader,
        atomic_dir(io.out) as tmp,
    ):
        reader.check_covers([r.id for r in records])
        for rec in progress(records, f"affinity labels shard {io.shard}", "img"):
            item = reader[rec.id]
            labels = confident_regions(
                read_image(rec.image),
                item.maps,
                item.classes,
                manifest.has_background,
                params.alpha_low,
                params.alpha_high,
                params.confidence,
                params,
            )
            write_label_png(tmp, rec.id, labels)
    logging.getLogger(__name__).info("wrote %d affinity label maps to %s", len(records), io.out)


STAGE = Stage(
    "affinity-labels",
    "confident regions from CAMs + dCRF, one PNG per image",
    MapsToLabelsIO,
    Params,
    run,
    section="affinity.labels",
)

"""Stage: pseudo-masks from refined maps (paper 3.4; :func:`wsss.methods.label_maps.pseudo_mask`):
upsample to the image, optional dCRF, argmax (the background included where the dataset
has one); one palette PNG per image. The input must be random-walk shards of the manifest's
labels, all from one model."""

from __future__ import annotations

from dataclasses import dataclass

from wsss.core.settings import CRFParams, MapsToLabelsIO
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class Params(CRFParams):
    """``alpha``: which stored background to use (16 in the paper); dCRF on by default."""

    alpha: float = arg(16.0, "background power: one of the random walk's alphas", above=0)
    crf: bool = arg(True, "refine with a dense CRF before the argmax")


def run(io: MapsToLabelsIO, params: Params) -> None:
    """Write ``io.out/<id>.png`` for every image of one shard (the directory atomically)."""
    import logging

    from wsss.core.atomic import atomic_dir
    from wsss.core.runtime import progress
    from wsss.data.manifest import read_image
    from wsss.data.palette import write_label_png
    from wsss.data.store import MapsReader, StoreError
    from wsss.jobs import shard_job
    from wsss.methods.label_maps import pseudo_mask

    job = shard_job(io)
    manifest, records = job.manifest, job.records
    with (
        MapsReader(io.maps, kind="rw", label_names=manifest.label_names) as reader,
        atomic_dir(io.out) as tmp,
    ):
        reader.check_covers([r.id for r in records])
        alpha_index = None
        if manifest.has_background:
            if params.alpha not in reader.alphas:
                raise StoreError(
                    f"alpha {params.alpha:g} is not among the walked alphas "
                    f"{reader.alphas} of {io.maps[0]}"
                )
            alpha_index = reader.alphas.index(params.alpha)
        crf = params if params.crf else None
        for rec in progress(records, f"pseudo-masks shard {io.shard}", "img"):
            labels = pseudo_mask(
                read_image(rec.image), reader[rec.id], manifest.has_background, alpha_index, crf
            )
            write_label_png(tmp, rec.id, labels)
    logging.getLogger(__name__).info("wrote %d pseudo-masks to %s", len(records), io.out)


STAGE = Stage(
    "pseudo-masks",
    "pseudo-masks of one shard from refined maps",
    MapsToLabelsIO,
    Params,
    run,
    section="pseudo",
)

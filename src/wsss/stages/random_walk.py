"""Stage: refine the CAMs of one shard by the random walk with AffinityNet's affinities
(paper 3.3; the math is :func:`wsss.methods.randomwalk.refine`). Output: the refined maps on the
stride-8 grid in HDF5, with one background map per walked alpha.

The input must be CAM shards of the manifest's labels, all from one model; the affinity
model must have been trained on the manifest's labels. The output records the
affinity model's fingerprint and, as its source, that of the CAM model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import AmpParams, MapsShardIO, NetShardIO
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO(NetShardIO, MapsShardIO):
    out: Path = arg(help="refined-map shard file (HDF5) to write")


@dataclass(frozen=True, kw_only=True)
class Params(AmpParams):
    """Random-walk settings of the paper: radius 5, beta 8, t = 2^8; alphas to sweep."""

    radius: int = arg(5, "neighbours at grid distance below this radius", minimum=1)
    beta: float = arg(8.0, "Hadamard power of the affinities (eq. 11)", above=0)
    logt: int = arg(8, "log2 of the number of walk steps t", minimum=0)
    alphas: tuple[float, ...] = arg(
        (1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0), "background powers walked (and swept)", min_items=1
    )


def run(io: IO, params: Params) -> None:
    """Write the refined maps of every image of one shard to ``io.out``."""
    from wsss.core.runtime import amp_of, progress
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import read_image
    from wsss.data.store import MapsReader, MapsWriter
    from wsss.jobs import shard_job
    from wsss.methods.randomwalk import GRID, refine
    from wsss.models.registry import check_labels, load_model

    job = shard_job(io)
    manifest = job.manifest
    loaded = load_model(io.model, "affinity", job.device)
    check_labels(io.model, loaded.label_names, manifest.label_names, f"the manifest {io.manifest}")
    alphas = params.alphas if manifest.has_background else ()
    with (
        MapsReader(io.maps, kind="cam", label_names=manifest.label_names) as reader,
        MapsWriter(
            io.out,
            "rw",
            manifest.label_names,
            manifest.has_background,
            io.shard,
            io.num_shards,
            stride=GRID,
            alphas=alphas,
            model=loaded.fingerprint,
            source=reader.model,
        ) as writer,
    ):
        reader.check_covers([r.id for r in job.records])
        for rec in progress(job.records, f"random walk shard {io.shard}", "img"):
            item = reader[rec.id]
            fg, bg = refine(
                loaded.model,
                to_tensor(read_image(rec.image)),
                item.maps,
                manifest.has_background,
                params.radius,
                params.beta,
                params.logt,
                alphas,
                amp_of(params),
            )
            writer.add(rec.id, fg, item.classes, background=bg, size=item.size)


STAGE = Stage(
    "random-walk",
    "refine the CAMs of one shard by the random walk",
    IO,
    Params,
    run,
    section="affinity.random_walk",
)

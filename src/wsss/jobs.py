"""What the per-image stages start from: the records of their shard, the label-map
directories they read, and the manifest, device and network of a shard job."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from wsss.core.runtime import pick_device
from wsss.core.settings import ShardIO
from wsss.data.manifest import DatasetError, Manifest, Record

log = logging.getLogger(__name__)


def shard_records(records: Sequence[Record], shard: int, num_shards: int) -> list[Record]:
    """Records of shard ``shard`` (0-based): every ``num_shards``-th of the sorted ids."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in 0..{num_shards - 1}")
    return sorted(records, key=lambda r: r.id)[shard::num_shards]


def find_labels(dirs: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """id -> PNG path over shard directories; an id found twice is an error."""
    found: dict[str, Path] = {}
    for directory in dirs:
        for path in sorted(Path(directory).rglob("*.png")):
            image_id = path.relative_to(directory).with_suffix("").as_posix()
            if image_id in found:
                raise DatasetError(f"{path}: image '{image_id}' is also in {found[image_id]}")
            found[image_id] = path
    return found


@dataclass
class ShardJob:
    """What a per-image stage starts from: the manifest, its shard's records, the device
    and (when the stage uses one) the network."""

    manifest: Manifest
    records: list[Record]
    device: torch.device
    model: torch.nn.Module | None


def shard_job(io: ShardIO, model_kind: str | Sequence[str] | None = None) -> ShardJob:
    """Load the manifest and the records of ``io``'s shard; with ``model_kind``, the model
    file ``io.model`` of that kind (or one of those kinds) on ``io.device``. Logs what the
    job will do."""
    from wsss.models.registry import load_model

    manifest = Manifest.load(io.manifest)
    records = shard_records(manifest.split(io.split), io.shard, io.num_shards)
    device = pick_device(getattr(io, "device", "cpu"))
    model = load_model(io.model, model_kind, device).model if model_kind else None
    log.info(
        "%d images of '%s' (shard %d/%d) on %s (%d threads)",
        len(records),
        io.split,
        io.shard,
        io.num_shards,
        device,
        torch.get_num_threads(),
    )
    return ShardJob(manifest, records, device, model)

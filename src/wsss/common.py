"""Helpers that several stages use: shards of a split, label-map directories, the device,
mixed precision and progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from wsss.data.manifest import DatasetError, Record


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


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> the visible CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision (bfloat16) on CUDA when ``enabled``; a no-op on the CPU."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda"
    )


def progress(iterable: Iterable, desc: str, unit: str) -> tqdm:
    """A progress bar: live in a terminal, a line every 30 s in a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        unit=unit,
        mininterval=0.5 if interactive else 30,
        dynamic_ncols=interactive,
        ascii=not interactive,
    )

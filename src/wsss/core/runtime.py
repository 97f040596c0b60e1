"""Where and how the networks run: the device, mixed precision, and progress bars that a
log file can hold."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from tqdm import tqdm


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

"""Stage: print what a maps, metrics, manifest, model or mask file holds
(:mod:`wsss.reporting.inspect`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    file: Path = arg(help="an .h5, .json, .pt or .png file of a run", positional=True)
    limit: int = arg(5, "images or classes to list")


def run(io: IO, params: None = None) -> None:
    """Print the description of ``io.file``."""
    from wsss.reporting.inspect import describe

    print(describe(io.file, limit=io.limit))


STAGE = Stage("inspect", "print what a maps, metrics, model or mask file holds", IO, None, run)

"""Stage: the comparison of a config's experiments: per experiment the mIoU of every stage,
weak / full, and the wall time and peak memory of every rule; mean and spread over seeds
(:mod:`wsss.reporting.compare`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    plan: Path = arg(help="experiment plan (JSON) written by the workflow")
    out: Path = arg(help="directory of the comparison files to write")


def run(io: IO, params: None = None) -> dict:
    """Write comparison.{json,csv,md,html,png} into ``io.out``."""
    import json

    from wsss.reporting.compare import write_comparison

    return write_comparison(json.loads(Path(io.plan).read_text()), io.out)


STAGE = Stage("compare", "compare the experiments of a run (table and plot)", IO, None, run)

"""Stage: print every stage's mIoU and the artefacts of a run (:mod:`wsss.reporting.summary`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    run_dir: Path = arg(help="results/<run> (or results/<run>/<experiment>)", positional=True)


def run(io: IO, params: None = None) -> None:
    """Print the summary of ``io.run_dir``."""
    from wsss.reporting.summary import summarize

    print(summarize(io.run_dir))


STAGE = Stage("summary", "print every stage's mIoU and the artefacts of a run", IO, None, run)

"""Stage: the per-stage mIoU table (HTML) and per-class IoU plot (PNG) of a run
(:mod:`wsss.report`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    metrics: tuple[Path, ...] = arg(help="metrics JSON files, in pipeline order")
    table: Path = arg(help="HTML table to write")
    plot: Path = arg(help="PNG plot to write")


def run(io: IO, params: None = None) -> None:
    """Write the table and the plot of the given metrics files."""
    from wsss.report import per_class_plot, stage_table

    stage_table(io.metrics, io.table)
    per_class_plot(io.metrics, io.plot)


STAGE = Stage("report-figures", "a run's per-stage mIoU table and per-class plot", IO, None, run)

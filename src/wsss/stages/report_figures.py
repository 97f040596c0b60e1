"""Stage: the per-stage mIoU table (HTML) and per-class IoU plot (PNG) of a run
(:mod:`wsss.reporting.report`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    metrics: tuple[Path, ...] = arg(help="metrics JSON files, in pipeline order")
    histories: tuple[Path, ...] = arg((), "training.csv of each trained network")
    table: Path = arg(help="HTML table to write")
    plot: Path = arg(help="PNG plot of per-class IoU to write")
    curves: Path | None = arg(
        None, "directory of training curves to write, <network>.png each (needs histories)"
    )


def run(io: IO, params: None = None) -> None:
    """Write the table and the plot of the given metrics files."""
    from wsss.reporting.report import per_class_plot, stage_table, training_curves

    stage_table(io.metrics, io.table, io.histories)
    per_class_plot(io.metrics, io.plot)
    if io.curves is not None:
        training_curves(io.histories, io.curves)


STAGE = Stage(
    "report-figures", "a run's stage table, per-class plot and training curves", IO, None, run
)

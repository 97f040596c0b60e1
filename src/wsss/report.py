"""Figures of a run for the HTML report: the per-stage mIoU table, per-class IoU bars."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from wsss.atomic import atomic_path
from wsss.pipeline import all_steps
from wsss.plots import finish_percent_axes, save_figure


def _load(files: Sequence[str | os.PathLike[str]]) -> dict[str, dict]:
    """Metrics by step key (their ``stage`` entry), in the order given."""
    found = {}
    for path in files:
        metrics = json.loads(Path(path).read_text())
        found[metrics["stage"]] = metrics
    return found


def _title(key: str, metrics: dict) -> str:
    step = all_steps().get(key)
    return f"{step.title if step else key} ({metrics.get('split', '?')} split)"


def stage_table(metrics: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> None:
    """An HTML table: one row per stage (mIoU, images, split, best background, floor), and
    the weak / full supervision ratio when both segmentation runs exist."""
    found = _load(metrics)
    rows = []
    for stem, m in found.items():
        best = ", ".join(f"{k} {v:g}" for k, v in m.get("best", {}).items())
        floor = f"{m['floor']['miou']:.2f}" if "floor" in m else ""
        rows.append(
            f"<tr><td>{html.escape(_title(stem, m))}</td><td>{m['miou']:.2f}</td>"
            f"<td>{m['num_images']}</td><td>{html.escape(best)}</td><td>{floor}</td></tr>"
        )
    if "seg" in found and "seg_full" in found:
        ratio = found["seg"]["miou"] / max(found["seg_full"]["miou"], 1e-9)
        rows.append(
            f"<tr><td>weak / full supervision</td><td>{ratio:.2f}</td><td colspan=3></td></tr>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>"
        "<table><tr><th>stage</th><th>mIoU (%)</th><th>images</th><th>best background</th>"
        "<th>trivial floor</th></tr>" + "".join(rows) + "</table></body></html>"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page)


def per_class_plot(metrics: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> None:
    """Grouped bars of each class's IoU at every stage (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    found = _load(metrics)
    names = list(next(iter(found.values()))["per_class"])
    width = 0.8 / len(found)
    # About 0.12 inch a bar, between 6 and 16 inches wide.
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.12 * len(names) * len(found) + 1.5)), 3.8))
    x = np.arange(len(names))
    for i, (stem, m) in enumerate(found.items()):
        values = [m["per_class"].get(n) or 0.0 for n in names]
        ax.bar(x + (i - (len(found) - 1) / 2) * width, values, width, label=_title(stem, m))
    ax.set_xticks(x, names, rotation=45, ha="right")
    finish_percent_axes(ax, "IoU (%)", legend_columns=3, legend_size=7)
    save_figure(fig, out)

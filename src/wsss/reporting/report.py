"""Figures of a run for the HTML report: the per-stage mIoU table, per-class IoU bars."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from wsss.core.atomic import atomic_path
from wsss.reporting.plots import finish_percent_axes, save_figure
from wsss.workflow.pipeline import WEAK, all_steps


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


def health(histories: Sequence[str | os.PathLike[str]]) -> list[dict]:
    """The verdict of each training (``health.json`` beside its ``training.csv``)."""
    found = []
    for path in histories:
        verdict = Path(path).with_name("health.json")
        if verdict.exists():
            found.append({"dir": Path(path).parent.name, **json.loads(verdict.read_text())})
    return found


def stage_table(
    metrics: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    histories: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """An HTML table: one row per stage (mIoU, images, split, best background, floor), and
    the weak / full supervision ratio of every weak segmentation (psa's ``seg``, WS-FCN's
    ``wsfcn_val``) whose bound exists; then one row per
    trained network: its final held-out score against its trivial prior."""
    found = _load(metrics)
    rows = []
    for stem, m in found.items():
        best = ", ".join(f"{k} {v:g}" for k, v in m.get("best", {}).items())
        floor = f"{m['floor']['miou']:.2f}" if "floor" in m else ""
        rows.append(
            f"<tr><td>{html.escape(_title(stem, m))}</td><td>{m['miou']:.2f}</td>"
            f"<td>{m['num_images']}</td><td>{html.escape(best)}</td><td>{floor}</td></tr>"
        )
    for weak in (key for key in WEAK if key in found and "seg_full" in found):
        ratio = found[weak]["miou"] / max(found["seg_full"]["miou"], 1e-9)
        rows.append(
            f"<tr><td>weak / full supervision ({html.escape(weak)})</td><td>{ratio:.2f}</td>"
            "<td colspan=3></td></tr>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>"
        "<table><tr><th>stage</th><th>mIoU (%)</th><th>images</th><th>best background</th>"
        "<th>trivial floor</th></tr>"
        + "".join(rows)
        + "</table>"
        + _health_table(histories)
        + "</body></html>"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page)


def _health_table(histories: Sequence[str | os.PathLike[str]]) -> str:
    rows = []
    for v in health(histories):
        if v["metric"] is None:
            continue
        state = (
            "healthy"
            if v["healthy"]
            else "; ".join(f"{p['what']} ({p['seen']})" for p in v["problems"])
        )
        rows.append(
            f"<tr><td>{html.escape(v['dir'])}</td><td>{html.escape(v['metric'])}</td>"
            f"<td>{v['final']:.2f}</td><td>{v['prior']:.2f}</td>"
            f"<td>{v['final_loss']:.4f}</td><td>{html.escape(state)}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<h3>Training health (held-out images)</h3><table><tr><th>network</th><th>score</th>"
        "<th>final (%)</th><th>trivial prior (%)</th><th>final loss</th><th>verdict</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def training_curves(
    histories: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """One PNG per trained network (a ``training.csv`` each, named after its directory:
    ``cam``, ``aff``, ...) in ``out_dir`` (written as a whole): the training loss (and its
    terms, ``loss_<name>`` columns, dashed) above the held-out score per epoch, with the
    trivial prior as a dashed line. Returns the files written."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from wsss.core.atomic import atomic_dir

    written = []
    with atomic_dir(out_dir) as tmp:
        for path in histories:
            name = Path(path).parent.name
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            fig, (loss_ax, score_ax) = plt.subplots(2, 1, figsize=(4.6, 5.6), sharex=True)
            epochs = [int(r["epoch"]) for r in rows]
            loss_ax.plot(epochs, [float(r["loss"]) for r in rows], marker="o", label="loss")
            terms = [k for k in rows[0] if k.startswith("loss_")]
            for term in terms:
                values = [float(r[term]) for r in rows]
                loss_ax.plot(epochs, values, ls="--", marker=".", label=term.removeprefix("loss_"))
            if terms:
                loss_ax.legend(fontsize=7)
            loss_ax.set_title(name)
            loss_ax.set_ylabel("training loss")
            loss_ax.grid(alpha=0.3)
            metrics = [k for k in rows[0] if k.startswith("val_") and not k.endswith("_prior")]
            for metric in metrics[:1] + [m for m in metrics[1:] if m == "val_top1"]:
                score_ax.plot(epochs, [float(r[metric]) for r in rows], marker="o", label=metric)
            priors = [k for k in rows[0] if k.endswith("_prior")]
            if priors:
                score_ax.axhline(float(rows[-1][priors[0]]), ls="--", c="grey", label="prior")
            score_ax.set_xlabel("epoch")
            score_ax.set_ylabel("held-out score (%)")
            score_ax.set_ylim(0, 100)
            score_ax.grid(alpha=0.3)
            score_ax.legend(fontsize=7)
            for ax in (loss_ax, score_ax):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            fig.tight_layout()
            fig.savefig(tmp / f"{name}.png", dpi=110)
            plt.close(fig)
            written.append(Path(out_dir) / f"{name}.png")
    return written


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

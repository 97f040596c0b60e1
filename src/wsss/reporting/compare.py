"""Comparison of experiments (variants of the pipeline settings, each over one or more seeds).

The input is a plan dict::

    {"steps": [{"key": "cam", "title": "CAMs (train)"}, ...],          # pipeline order
     "experiments": [{"name": "beta8", "group": "beta8", "seed": 0,
                      "metrics": {"cam": ".../metrics/cam.json", ...},   # step -> metrics JSON
                      "shared": {"cam": "beta8"},                       # step -> owning experiment
                      "reused": {"train_cam": "beta8"},                 # rule -> where it ran
                      "benchmarks": {"train_cam": [".../train_cam.tsv"], ...}}, ...]}

mIoU values are percent, times are wall-clock seconds, memory is peak resident set size in MB
(from Snakemake ``benchmark:`` files).
"""

from __future__ import annotations

import csv
import html
import json
import os
import statistics
import textwrap
from pathlib import Path

from wsss.core.atomic import atomic_path, write_json
from wsss.reporting.plots import finish_percent_axes, save_figure
from wsss.workflow.pipeline import WEAK

# Values Snakemake writes in a benchmark column it could not measure (very short jobs).
_MISSING = {"", "NA", "-"}


def read_benchmark(path: Path) -> tuple[float, float | None]:
    """Wall seconds and peak RSS in MB (None when not measured) of a Snakemake benchmark TSV,
    from its last data row."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path}: benchmark file without a data row")
    row = dict(zip(lines[0].split("\t"), lines[-1].split("\t")))
    rss = row.get("max_rss", "").strip()
    return float(row["s"]), None if rss in _MISSING else float(rss)


def _rules(benchmarks: dict[str, list[str]]) -> dict[str, dict]:
    """Per rule: wall seconds summed over its files (shards), peak MB the max over them, and the
    number of files found; files that do not exist are skipped, rules without any left out."""
    rules = {}
    for rule, paths in benchmarks.items():
        found = [read_benchmark(Path(p)) for p in paths if Path(p).exists()]
        if not found:
            continue
        peaks = [mb for _, mb in found if mb is not None]
        rules[rule] = {
            "seconds": sum(s for s, _ in found),
            "peak_mb": max(peaks) if peaks else None,
            "files": len(found),
        }
    return rules


def _experiment(exp: dict, steps: list[str]) -> dict:
    """One experiment's mIoU per step (None when the plan lists no metrics for it), weak / full
    ratio (its last weakly supervised segmentation, e.g. seg or wsfcn_val, over seg_full),
    and time (s) and peak memory (MB) per rule and in total."""
    miou: dict[str, float | None] = {}
    for key in steps:
        path = exp["metrics"].get(key)
        if path is None:
            miou[key] = None
            continue
        if not Path(path).exists():
            raise FileNotFoundError(
                f"{path}: metrics of step {key!r} of experiment {exp['name']!r} not found"
            )
        miou[key] = float(json.loads(Path(path).read_text())["miou"])
    weak = next((miou[k] for k in reversed(steps) if k in WEAK and miou[k] is not None), None)
    full = miou.get("seg_full")
    rules = _rules(exp.get("benchmarks", {}))
    peaks = [r["peak_mb"] for r in rules.values() if r["peak_mb"] is not None]
    return {
        "name": exp["name"],
        "group": exp["group"],
        "seed": exp.get("seed"),
        "miou": miou,
        "weak_full": weak / full if weak is not None and full else None,
        "shared": dict(exp.get("shared", {})),
        "reused": dict(exp.get("reused", {})),
        "rules": rules,
        "total_s": sum(r["seconds"] for r in rules.values()),
        "peak_mb": max(peaks) if peaks else None,
    }


def seed_stats(values: list[float | None]) -> dict | None:
    """n, mean and sample standard deviation (n - 1; 0 for a single value) of the values that
    are not None; None when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return {"n": len(present), "mean": statistics.fmean(present), "std": std}


def compare(plan: dict) -> dict:
    """Compare the plan's experiments.

    Returns a JSON-serialisable dict: ``steps`` (as in the plan), ``experiments`` (per
    experiment: ``miou`` per step in percent, ``weak_full`` = weak / seg_full, ``rules`` with wall
    ``seconds`` summed over shards and ``peak_mb`` the max RSS in MB, ``total_s``, ``peak_mb``,
    ``shared``) and ``groups`` (per group of seeds, in order of first appearance: ``n``,
    ``experiments``, and ``miou`` per step and ``weak_full`` as ``{"n", "mean", "std"}`` with the
    sample standard deviation, or None where no experiment of the group has the value).

    Raises FileNotFoundError when a metrics file listed in the plan does not exist.
    """
    steps = [s["key"] for s in plan["steps"]]
    experiments = [_experiment(exp, steps) for exp in plan["experiments"]]
    members: dict[str, list[dict]] = {}
    for exp in experiments:
        members.setdefault(exp["group"], []).append(exp)
    groups = [
        {
            "group": group,
            "n": len(exps),
            "experiments": [e["name"] for e in exps],
            "miou": {key: seed_stats([e["miou"][key] for e in exps]) for key in steps},
            "weak_full": seed_stats([e["weak_full"] for e in exps]),
        }
        for group, exps in members.items()
    ]
    return {"steps": plan["steps"], "experiments": experiments, "groups": groups}


def mean_std(stats: dict | None, digits: int = 2) -> str:
    if stats is None:
        return "—"
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} ({stats['n']})"


def _tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The comparison as (title, header, rows) tables of text cells: per variant the mIoU
    of every step; per rule (rows) and experiment (columns) wall time and peak memory."""
    steps = result["steps"]
    group_rows = [
        [g["group"], str(g["n"])]
        + [mean_std(g["miou"][s["key"]]) for s in steps]
        + [mean_std(g["weak_full"], 3)]
        for g in result["groups"]
    ]
    experiments = result["experiments"]
    rules = list(dict.fromkeys(r for e in experiments for r in e["rules"]))
    rule_rows = []
    for rule in rules:
        cells = [rule]
        for e in experiments:
            r = e["rules"].get(rule)
            if r is None:
                cells.append("—")
                continue
            mb = "" if r["peak_mb"] is None else f" / {r['peak_mb']:.0f} MB"
            owner = e.get("reused", {}).get(rule)
            cells.append(f"{r['seconds']:.1f} s{mb}" + (f" (from {owner})" if owner else ""))
        rule_rows.append(cells)
    rule_rows.append(["total (s)"] + [f"{e['total_s']:.1f}" for e in experiments])
    rule_rows.append(
        ["peak (MB)"]
        + ["—" if e["peak_mb"] is None else f"{e['peak_mb']:.0f}" for e in experiments]
    )
    rule_rows.append(
        ["reused artefacts"]
        + [
            ", ".join(f"{step}: shared ({owner})" for step, owner in e["shared"].items()) or "—"
            for e in experiments
        ]
    )
    return [
        (
            "mIoU (%) per variant: mean ± sample std (number of seeds)",
            ["variant", "n"] + [s["title"] for s in steps] + ["weak / full"],
            group_rows,
        ),
        (
            "Wall time and peak memory per rule (a rule's job made once for several "
            "experiments counts for each)",
            ["rule"] + [e["name"] for e in experiments],
            rule_rows,
        ),
    ]


def _markdown(tables: list[tuple[str, list[str], list[list[str]]]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    parts = []
    for title, header, rows in tables:
        parts += [f"## {title}", "", line(header), line(["---"] * len(header))]
        parts += [line(row) for row in rows] + [""]
    return "\n".join(parts)


def _html(tables: list[tuple[str, list[str], list[list[str]]]]) -> str:
    def line(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    body = "".join(
        f"<h2>{html.escape(title)}</h2><table>{line(header, 'th')}"
        + "".join(line(row, "td") for row in rows)
        + "</table>"
        for title, header, rows in tables
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Comparison of experiments"
        "</title><style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>"
        f"{body}</body></html>\n"
    )


def _csv(result: dict, path: Path) -> None:
    """One row per experiment: name, group, seed, ``<step>_miou`` (%), weak_full, total_s,
    peak_mb; empty cells where a value is missing."""
    keys = [s["key"] for s in result["steps"]]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["name", "group", "seed"]
            + [f"{k}_miou" for k in keys]
            + ["weak_full", "total_s", "peak_mb"]
        )
        for e in result["experiments"]:
            writer.writerow(
                [e["name"], e["group"], "" if e["seed"] is None else e["seed"]]
                + ["" if e["miou"][k] is None else e["miou"][k] for k in keys]
                + ["" if e[c] is None else e[c] for c in ("weak_full", "total_s", "peak_mb")]
            )


def _plot(result: dict, out: Path) -> None:
    """Grouped bars of each group's mean mIoU (%) per step, error bars the sample std (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, groups = result["steps"], result["groups"]
    width = 0.8 / len(groups)
    # About 0.3 inch a bar and 1.1 inch a step label, between 6 and 14 inches wide.
    size = max(0.3 * len(steps) * len(groups) + 2.0, 1.1 * len(steps) + 1.0)
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, size)), 4.0))
    nan = float("nan")
    for i, g in enumerate(groups):
        stats = [g["miou"][s["key"]] for s in steps]
        ax.bar(
            [j + (i - (len(groups) - 1) / 2) * width for j in range(len(steps))],
            [nan if st is None else st["mean"] for st in stats],
            width,
            yerr=[nan if st is None or st["n"] < 2 else st["std"] for st in stats],
            capsize=3,
            label=f"{g['group']} (n={g['n']})",
        )
    ax.set_xticks(range(len(steps)), [textwrap.fill(s["title"], 14) for s in steps], fontsize=8)
    finish_percent_axes(ax, "mIoU (%)", legend_columns=4)
    save_figure(fig, out)


def write_comparison(plan: dict, out_dir: str | os.PathLike[str]) -> dict:
    """Compare the plan's experiments (see :func:`compare`, returned) and write
    ``comparison.{json,csv,md,html,png}`` into ``out_dir``, each atomically."""
    out = Path(out_dir)
    result = compare(plan)
    tables = _tables(result)
    write_json(out / "comparison.json", result)
    with atomic_path(out / "comparison.csv") as tmp:
        _csv(result, tmp)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text("# Comparison of experiments\n\n" + _markdown(tables))
    with atomic_path(out / "comparison.html") as tmp:
        tmp.write_text(_html(tables))
    _plot(result, out / "comparison.png")
    return result

"""Stage: where each class's pixels go, for every scored step of a run: the confusion matrix
of each metrics file as a picture, and the labels that take each class's pixels as a table.

For a step scored on N labels with confusion matrix C [N, N] (rows: ground truth,
columns: prediction, pixel counts; ``metrics/<step>.json``), the picture shows the row
shares

    R[i, j] = 100 * C[i, j] / sum_j C[i, j]        (percent of class i's pixels labelled j),

whose diagonal is the class's recall; a class without ground-truth pixels is a blank row.
The table (``confusions.csv``) lists, per step and class, the ``top`` labels other than
the class itself that take its pixels, largest share first (``road`` taking 39 % of
``car`` is the kind of failure a mean IoU hides).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from wsss.core.atomic import atomic_path
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    metrics: tuple[Path, ...] = arg(help="metrics JSON files (wsss eval-maps / eval-labels)")
    out: Path = arg(help="directory to write: <step>.png per metrics file, confusions.csv")
    top: int = arg(2, "labels listed per class in confusions.csv", minimum=1)


def read_confusion(path: Path) -> tuple[str, list[str], list[list[int]]]:
    """(step, labels, confusion matrix) of a metrics file; an error names the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        step, labels, conf = data["stage"], data["labels"], data["confusion"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a metrics file with a confusion matrix ({err!r})") from err
    if len(conf) != len(labels) or any(len(row) != len(labels) for row in conf):
        raise ValueError(
            f"{path}: the confusion matrix is not {len(labels)} x {len(labels)} "
            f"(one row and column per label)"
        )
    return step, labels, conf


def row_shares(conf: list[list[int]]):  # noqa: ANN201 (numpy at call time)
    """R [N, N] float64, percent of each ground-truth class's pixels per predicted label;
    NaN rows for classes without pixels."""
    import numpy as np

    counts = np.asarray(conf, dtype=np.float64)
    totals = counts.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, 100 * counts / totals, np.nan)


def plot(step: str, labels: list[str], shares, out: Path) -> None:  # noqa: ANN001
    """The row shares as a heatmap with the percentages written in cells of 5 % and more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from wsss.reporting.plots import save_figure

    n = len(labels)
    size = max(4.0, 0.38 * n + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(np.nan_to_num(shares, nan=0.0), cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("ground truth")
    ax.set_title(f"{step}: % of each class's pixels", fontsize=9)
    for i in range(n):
        for j in range(n):
            if shares[i, j] >= 5:
                colour = "white" if shares[i, j] >= 60 else "black"
                ax.text(j, i, f"{shares[i, j]:.0f}", ha="center", va="center", fontsize=6,
                        color=colour)  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="%")
    save_figure(fig, out)


def run(io: IO, params: None = None) -> list[dict]:
    """Write the pictures and the table; return the table's rows."""
    import numpy as np

    from wsss.methods.metrics import taken_by

    read = [read_confusion(path) for path in io.metrics]
    steps = [step for step, _, _ in read]
    if len(set(steps)) != len(steps):
        raise ValueError(f"two metrics files of one step among {[str(p) for p in io.metrics]}")
    io.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for step, labels, conf in read:
        counts = np.asarray(conf)
        shares = row_shares(counts)
        plot(step, labels, shares, io.out / f"{step}.png")
        for i, name in enumerate(labels):
            if np.isnan(shares[i, i]):
                continue
            taken = taken_by(counts, labels, name, io.top)
            rows.append(
                {
                    "step": step,
                    "class": name,
                    "recall": round(float(shares[i, i]), 2),
                    "taken_by": "; ".join(f"{label} {share:.2f}" for label, share in taken),
                }
            )
    with atomic_path(io.out / "confusions.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, ["step", "class", "recall", "taken_by"])
        writer.writeheader()
        writer.writerows(rows)
    worst = sorted(rows, key=lambda row: row["recall"])[:5]
    for row in worst:
        print(f"{row['step']}: {row['class']} recall {row['recall']:.2f} %, "
              f"taken by {row['taken_by'] or 'nothing'}")  # fmt: skip
    return rows


STAGE = Stage(
    "confusion", "where each class's pixels go: confusion pictures and table of a run", IO, None,
    run,
)  # fmt: skip

"""WS-FCN's learning curve: one training with a model file kept after every epoch, each one
scored on its masks of the training split (each image's labelled classes, one scale with
its mirror: the pseudo-mask protocol, cheap enough to run every epoch), some also on the
val split (the config's ``wsfcn.infer`` scales and score cut), beside the cumulative
training time and the held-out classification score. So a reader sees where the
single-stage network stands at any budget and where it would cross a given line.

    .venv/bin/python benchmarks/wsfcn_curve.py --config configs/wsfcn_curve_demo.yaml \\
        --val-at 10 20 40
    .venv/bin/python benchmarks/wsfcn_curve.py --base configs/msrc21.yaml \\
        --config configs/wsfcn_curve_msrc21.yaml --val-at 6 12 24

``--every K`` scores every K-th epoch only (and the ``--val-at`` ones); ``--upto N`` scores
the first N epochs of a training stopped there (or still running) without training further.

The constant learning rate (``poly_power: 0``, the reference's) makes the model after epoch
k of a long training the model a k-epoch training would give: one run yields the curve.
The workflow prepares the dataset (``results/<run>/dataset.json``); the training, its
snapshots and every score go to ``results/<run>/curve/``, which a rerun continues (the
training resumes, finished scores are read back). Prints a table and writes
``curve.csv`` and ``curve.png`` there (``--plot`` copies the picture elsewhere).
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from snakemake.utils import validate

from wsss.workflow.experiments import merge

ROOT = Path(__file__).resolve().parent.parent
WSSS = str(Path(sys.executable).parent / "wsss")


def flags(section: dict) -> list[str]:
    """The command-line flags of a config section (as the workflow's rules pass them)."""
    out: list[str] = []
    for key, value in section.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(name if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out += [name, *map(str, value)]
        else:
            out += [name, str(value)]
    return out


def run(cmd: list[str], log: Path) -> None:
    """Run a command, its output to ``log``; stop with the log's tail if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        done = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text().splitlines()[-20:]
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n" + "\n".join(tail))


def score(
    manifest: Path, model: Path, out: Path, split: str, infer: dict, present_only: bool, log: Path
) -> float:
    """mIoU of the model's masks of ``split`` (read back from ``out/metrics.json`` when there)."""
    metrics = out / "metrics.json"
    if not metrics.exists():
        if (out / "masks").exists():
            shutil.rmtree(out / "masks")
        cmd = [
            WSSS,
            "infer-wsfcn",
            "--manifest",
            str(manifest),
            "--model",
            str(model),
            "--out",
            str(out / "masks"),
            "--split",
            split,
            "--device",
            "cpu",
            "--present-only" if present_only else "--no-present-only",
            *flags(infer),
        ]
        run(cmd, log)
        run(
            [
                WSSS,
                "eval-labels",
                "--manifest",
                str(manifest),
                "--labels",
                str(out / "masks"),
                "--out",
                str(metrics),
                "--stage",
                f"wsfcn_{split}",
                "--split",
                split,
            ],
            log,
        )
    return float(json.loads(metrics.read_text())["miou"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="the curve's config")
    parser.add_argument("--base", nargs="*", type=Path, default=[], help="preset configs first")
    parser.add_argument("--val-at", nargs="*", type=int, default=[], help="epochs scored on val")
    parser.add_argument(
        "--every", type=int, default=1, help="score the train-split masks every this many epochs"
    )
    parser.add_argument(
        "--upto",
        type=int,
        help="score only the first epochs, without training further (a stopped training)",
    )
    parser.add_argument("--plot", type=Path, help="also copy the picture here")
    parser.add_argument(
        "--lines",
        nargs="*",
        default=[],
        metavar="NAME=MIOU",
        help="horizontal lines on the train-split plot (e.g. 'CAMs=61.60')",
    )
    args = parser.parse_args()

    config: dict = yaml.safe_load((ROOT / "config.yaml").read_text())
    for path in [*args.base, args.config]:
        config = merge(config, yaml.safe_load(path.read_text()) or {})
    # every setting the files leave out, from the schema's defaults (as the workflow does)
    validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"), set_default=True)
    run_dir = ROOT / config["results"] / config["run"]
    curve = run_dir / "curve"
    log = curve / "curve.log"
    manifest = run_dir / "dataset.json"
    configs = [str(p) for p in [*args.base, args.config]]
    run(
        [
            sys.executable,
            "-m",
            "snakemake",
            str(manifest.relative_to(ROOT)),
            "--cores",
            "all",
            "--quiet",
            "rules",
            "--configfile",
            *configs,
        ],
        log,
    )

    train = config["wsfcn"]["train"]
    epochs = int(train["epochs"])
    if float(train.get("poly_power", 0.0)) != 0.0:
        sys.exit("wsfcn.train.poly_power must be 0 (constant lr) for one run to give the curve")
    model = curve / "model.pt"
    start = time.time()
    if not model.exists() and args.upto is None:
        run(
            [
                WSSS,
                "train-wsfcn",
                "--manifest",
                str(manifest),
                "--out",
                str(model),
                "--state-dir",
                str(curve / "train-state"),
                "--split",
                config["dataset"]["train_split"],
                "--held-out",
                config["dataset"]["val_split"],
                "--device",
                "cpu",
                *flags(train),
                "--snapshots",
                *map(str, range(1, epochs + 1)),
            ],
            log,
        )
    print(f"training: {(time.time() - start) / 60:.1f} min this invocation")
    with (curve / "training.csv").open() as fh:
        history = list(csv.DictReader(fh))
    one_scale = {**config["wsfcn"]["infer"], "scales": [1.0], "flip": True}
    rows = []
    elapsed = 0.0
    for k in range(1, min(args.upto or epochs, len(history)) + 1):
        elapsed += float(history[k - 1]["seconds"])
        if k % args.every and k not in args.val_at and k != args.upto:
            continue
        snapshot = curve / f"model-epoch{k}.pt"
        row = {
            "epoch": k,
            "train_min": round(elapsed / 60, 2),
            "held_out_map": history[k - 1].get("val_map", ""),
            "loss_segmentation": history[k - 1].get("loss_segmentation", ""),
            "train_masks": round(
                score(
                    manifest,
                    snapshot,
                    curve / f"epoch{k}/train",
                    config["dataset"]["train_split"],
                    one_scale,
                    True,
                    log,
                ),
                2,
            ),
            "val_masks": "",
        }
        if k in args.val_at:
            row["val_masks"] = round(
                score(
                    manifest,
                    snapshot,
                    curve / f"epoch{k}/val",
                    config["dataset"]["val_split"],
                    config["wsfcn"]["infer"],
                    False,
                    log,
                ),
                2,
            )
        rows.append(row)
        print(" | ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    with (curve / "curve.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, curve / "curve.png", config["run"], args.lines)
    if args.plot:
        shutil.copyfile(curve / "curve.png", args.plot)
    print("\n| epoch | training (min) | held-out mAP | train masks | val masks |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['epoch']} | {r['train_min']} | {r['held_out_map']} | {r['train_masks']} "
            f"| {r['val_masks']} |"
        )
    print(f"\nwritten: {curve / 'curve.csv'}, {curve / 'curve.png'}")
    return 0


def plot(rows: list[dict], out: Path, title: str, lines: list[str]) -> None:
    """Train-split (and val) mIoU against training minutes, with reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    minutes = [r["train_min"] for r in rows]
    ax.plot(minutes, [r["train_masks"] for r in rows], "o-", ms=3, label="train-split masks")
    val = [(r["train_min"], r["val_masks"]) for r in rows if r["val_masks"] != ""]
    if val:
        ax.plot(*zip(*val), "s--", label="val masks")
    for line in lines:
        name, value = line.split("=")
        ax.axhline(float(value), ls=":", c="grey")
        ax.text(minutes[0], float(value), f" {name}", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("training time (min, this machine)")
    ax.set_ylabel("mIoU")
    ax.set_title(f"WS-FCN learning curve: {title}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    raise SystemExit(main())

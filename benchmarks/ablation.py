"""Run an experiments config (an ablation) and print its table: per variant the mIoU of every
scored step, the CAM network's held-out score, seconds per CAM-training epoch and peak memory;
then the per-class IoU changes against the first variant for the classes asked for.

    .venv/bin/python benchmarks/ablation.py --config configs/ablation_hfpl_demo.yaml
    .venv/bin/python benchmarks/ablation.py --base configs/msrc21.yaml \\
        --config configs/ablation_hfpl_msrc21.yaml --data ../shared/data/msrc21 \\
        --classes aeroplane sky face body

``--base`` names preset configs the ablation builds on (applied first), ``--data`` sets
``dataset.root``; ``--no-run`` only prints the table of finished results.
Pseudo-label steps are scored on the train split, segmentation on val. Seconds per epoch are
the mean of the CAM training's ``training.csv``; peak memory is the largest ``max_rss`` of the
variant's CAM training and of all its jobs (Snakemake ``benchmark:`` files).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def mean_epoch_seconds(history: Path) -> float | None:
    if not history.exists():
        return None
    with history.open() as fh:
        rows = list(csv.DictReader(fh))
    return sum(float(r["seconds"]) for r in rows) / len(rows) if rows else None


def max_rss(paths: list[str]) -> float | None:
    peaks = []
    for path in (ROOT / p for p in paths):
        if path.exists():
            with path.open() as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
            if rows and rows[-1]["max_rss"] not in ("", "NA", "-"):
                peaks.append(float(rows[-1]["max_rss"]))
    return max(peaks) if peaks else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="experiments config")
    parser.add_argument("--base", nargs="*", type=Path, default=[], help="preset configs first")
    parser.add_argument("--data", type=Path, help="dataset root (sets dataset.root)")
    parser.add_argument("--classes", nargs="*", default=[], help="classes whose IoU to list")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--no-run", action="store_true", help="only print the table")
    args = parser.parse_args()

    extra = {"dataset": {"root": str(args.data.resolve())}} if args.data else {}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(extra, f)
    if not args.no_run:
        configs = [*map(str, args.base), str(args.config), f.name]
        cmd = [sys.executable, "-m", "snakemake", "--cores", args.cores, "--configfile",
               *configs, "--keep-going", "--quiet", "rules"]  # fmt: skip
        start = time.time()
        # --keep-going: a variant whose training fails its health checks stops only its own
        # jobs; the table shows what the others reached.
        done = subprocess.run(cmd, cwd=ROOT)
        if done.returncode:
            print(f"snakemake exited with {done.returncode}: some jobs failed (see the logs)")
        print(f"wall time of this invocation: {(time.time() - start) / 60:.1f} min\n")

    config = yaml.safe_load(args.config.read_text())
    results = ROOT / config.get("results", "results")
    # The workflow's own plan: each variant's metrics and benchmark files, wherever made.
    the_plan = json.loads((results / config["run"] / "comparison/plan.json").read_text())
    steps = [s["key"] for s in the_plan["steps"]]
    print(f"{config['run']}: mIoU (pseudo-label steps on train, segmentation on val)\n")
    print(
        "| variant | " + " | ".join(steps) + " | pseudo vs first | weak / full "
        "| CAM val score (prior) | s / CAM epoch | CAM training peak (MB) | peak of all jobs (MB) |"
    )
    print("|---" * (len(steps) + 7) + "|")
    per_class: dict[str, dict] = {}
    first_pseudo = None
    for exp in the_plan["experiments"]:
        miou = {}
        for key in steps:
            metrics = ROOT / exp["metrics"][key] if key in exp["metrics"] else None
            if metrics is not None and metrics.exists():
                data = json.loads(metrics.read_text())
                miou[key] = data["miou"]
                per_class.setdefault(exp["name"], {})[key] = data.get("per_class", {})
        cam_dir = ROOT / Path(exp["benchmarks"]["train_cam"][0]).parent.parent / "cam"
        health = cam_dir / "health.json"
        score = ""
        if health.exists():
            verdict = json.loads(health.read_text())
            score = f"{fmt(verdict['final'])} ({fmt(verdict['prior'])})"
        weak, full = miou.get("seg"), miou.get("seg_full")
        ratio = weak / full if weak is not None and full else None
        pseudo = miou.get("pseudo")
        first_pseudo = pseudo if first_pseudo is None else first_pseudo
        change = "—" if pseudo is None or first_pseudo is None else f"{pseudo - first_pseudo:+.2f}"
        every = [p for paths in exp["benchmarks"].values() for p in paths]
        print(
            f"| {exp['name']} | "
            + " | ".join(fmt(miou.get(k)) for k in steps)
            + f" | {change} | {fmt(ratio, 3)} | {score}"
            + f" | {fmt(mean_epoch_seconds(cam_dir / 'training.csv'), 1)}"
            + f" | {fmt(max_rss(exp['benchmarks']['train_cam']), 0)} | {fmt(max_rss(every), 0)} |"
        )
    if args.classes:
        first = the_plan["experiments"][0]["name"]
        print(f"\nper-class IoU, change against {first} (pseudo-mask step, train)\n")
        print("| variant | " + " | ".join(args.classes) + " |")
        print("|---" * (len(args.classes) + 1) + "|")
        base = per_class.get(first, {}).get("pseudo", {})
        for name, steps_found in per_class.items():
            values = steps_found.get("pseudo", {})
            cells = []
            for cls in args.classes:
                v, b = values.get(cls), base.get(cls)
                if v is None:
                    cells.append("—")
                elif name == first or b is None:
                    cells.append(f"{v:.2f}")
                else:
                    cells.append(f"{v:.2f} ({v - b:+.2f})")
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

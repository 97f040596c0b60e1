"""Run an experiments config (an ablation) and print its table: per variant the mIoU of every
scored step, the first network's held-out score (the CAM network, or WS-FCN for method
wsfcn), its seconds per training epoch and peak memory; then the per-class IoU changes
against the first variant for the classes asked for; for variants run with several seeds,
the mean and sample standard deviation of each step over the seeds scored so far.

    .venv/bin/python benchmarks/ablation.py --config configs/ablation_hfpl_demo.yaml
    .venv/bin/python benchmarks/ablation.py --base configs/msrc21.yaml \\
        --config configs/ablation_hfpl_msrc21.yaml --classes aeroplane sky face body

``--base`` names preset configs the ablation builds on (applied first), ``--data`` sets
``dataset.root`` (as an absolute path; a changed root reruns every stage from the first, so a
run started without ``--data``, on the preset's own root, is continued without it);
``--no-run`` only prints the table of finished results. ``--where CLASS...`` adds, per
variant, each class's recall at one step (``--where-step``, default the first) and the two
labels that take most of its missed pixels (from the step's confusion matrix).
Pseudo-label steps are scored on the train split, segmentation on val; "train masks vs first"
compares each variant's last train-split step (pseudo-masks, or WS-FCN's masks) with the first
variant's, and weak / full divides its last weakly supervised segmentation (seg, or WS-FCN's
val masks) by the bound. Seconds per epoch are the mean of the first network's
``training.csv``; peak memory is the largest ``max_rss`` of that training and of all the
variant's jobs (Snakemake ``benchmark:`` files). The method's wall time is the sum of the
``s`` of its own jobs, from preparing the dataset to its last masks: every rule but the
scoring (``eval_*``) and the fully supervised bound (``*_seg_full``), the cost of the method
run alone, one job after the other; its peak is the largest ``max_rss`` among those jobs.
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
from snakemake.utils import update_config, validate

from wsss.methods.metrics import taken_by
from wsss.reporting.compare import mean_std, read_benchmark, seed_stats
from wsss.workflow.experiments import expand, plan
from wsss.workflow.pipeline import WEAK, all_steps

ROOT = Path(__file__).resolve().parent.parent
# The first network of each method: its training rule and directory.
NETWORKS = {"train_cam": "cam", "train_wsfcn": "wsfcn"}


def mean_epoch_seconds(history: Path) -> float | None:
    if not history.exists():
        return None
    with history.open() as fh:
        rows = list(csv.DictReader(fh))
    return sum(float(r["seconds"]) for r in rows) / len(rows) if rows else None


def max_rss(paths: list[str]) -> float | None:
    found = [read_benchmark(ROOT / p) for p in paths if (ROOT / p).exists()]
    peaks = [mb for _, mb in found if mb is not None]
    return max(peaks) if peaks else None


def method_files(benchmarks: dict[str, list[str]]) -> list[str]:
    """The benchmark files of the jobs that make the method's masks: not scoring, not the
    fully supervised bound."""
    return [
        p
        for rule, paths in benchmarks.items()
        if not rule.startswith("eval_") and not rule.endswith("_seg_full")
        for p in paths
    ]


def total_seconds(paths: list[str]) -> tuple[float, list[str]]:
    """Sum of the wall seconds (``s``) of the Snakemake benchmark files that exist, and the
    paths of those that do not (their jobs left no benchmark file, e.g. copied results)."""
    total, missing = 0.0, []
    for rel in paths:
        if (ROOT / rel).exists():
            total += read_benchmark(ROOT / rel)[0]
        else:
            missing.append(rel)
    return total, missing


def train_masks(by_step: dict):
    """The value of the last train-split step found in ``by_step`` (step key -> value): the
    pseudo-masks, or WS-FCN's masks of the train split; None when there is none."""
    found = [k for k, s in all_steps().items() if s.split == "train" and k in by_step]
    return by_step[found[-1]] if found else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_header(columns: list[str]) -> None:
    """The header of a markdown table with a first column "variant"."""
    print("| variant | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")


def print_per_class(values: dict[str, dict], first: str, classes: list[str]) -> None:
    """A markdown table: per variant (``values``: name -> class -> IoU) the IoU of each of
    ``classes``, and its change against variant ``first``."""
    print_header(classes)
    base = values.get(first, {})
    for name, found in values.items():
        cells = []
        for cls in classes:
            v, b = found.get(cls), base.get(cls)
            if v is None:
                cells.append("—")
            elif name == first or b is None:
                cells.append(f"{v:.2f}")
            else:
                cells.append(f"{v:.2f} ({v - b:+.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


def workflow_plan(configs: list[Path]) -> dict:
    """The experiments' plan as the workflow computes it from config.yaml and ``configs``
    (applied in order, as Snakemake's ``--configfile``), its schema's defaults included."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for path in configs:
        update_config(config, yaml.safe_load(path.read_text()) or {})
    validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
    return plan(expand(config), config["results"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="experiments config")
    parser.add_argument("--base", nargs="*", type=Path, default=[], help="preset configs first")
    parser.add_argument("--data", type=Path, help="dataset root (sets dataset.root)")
    parser.add_argument("--classes", nargs="*", default=[], help="classes whose IoU to list")
    parser.add_argument(
        "--where",
        nargs="*",
        default=[],
        metavar="CLASS",
        help="classes whose recall, and the labels that take their missed pixels, to list",
    )
    parser.add_argument("--where-step", help="step for --where (default: the first)")
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
    # The workflow's own plan (what `rule experiment_plan` writes): each variant's metrics
    # and benchmark files, wherever made; computed here, so that runs of some experiments
    # only (targeted chains) are tabled too.
    the_plan = workflow_plan([*args.base, args.config, Path(f.name)])
    steps = [s["key"] for s in the_plan["steps"]]
    print(f"{config['run']}: mIoU (pseudo-label steps on train, segmentation on val)\n")
    print(
        "| variant | " + " | ".join(steps) + " | train masks vs first | weak / full "
        "| network | val score (prior) | s / epoch | training peak (MB) | peak of all jobs (MB) "
        "| method wall (min) | method peak (MB) |"
    )
    print("|---" * (len(steps) + 10) + "|")
    scored: dict[str, dict[str, dict]] = {}  # variant -> step -> its metrics JSON
    first_masks = None
    unmeasured: set[str] = set()
    for exp in the_plan["experiments"]:
        miou = {}
        for key in steps:
            metrics = ROOT / exp["metrics"][key] if key in exp["metrics"] else None
            if metrics is not None and metrics.exists():
                scored.setdefault(exp["name"], {})[key] = json.loads(metrics.read_text())
                miou[key] = scored[exp["name"]][key]["miou"]
        rule = next(r for r in NETWORKS if r in exp["benchmarks"])
        net_dir = ROOT / Path(exp["benchmarks"][rule][0]).parent.parent / NETWORKS[rule]
        health = net_dir / "health.json"
        score = ""
        if health.exists():
            verdict = json.loads(health.read_text())
            score = f"{fmt(verdict['final'])} ({fmt(verdict['prior'])})"
        weak = next((miou[k] for k in reversed(steps) if k in WEAK and k in miou), None)
        full = miou.get("seg_full")
        ratio = weak / full if weak is not None and full else None
        masks = train_masks(miou)
        first_masks = masks if first_masks is None else first_masks
        change = "—" if masks is None or first_masks is None else f"{masks - first_masks:+.2f}"
        every = [p for paths in exp["benchmarks"].values() for p in paths]
        own = method_files(exp["benchmarks"])
        wall, missing = total_seconds(own)
        trained = (ROOT / exp["benchmarks"][rule][0]).exists()
        if trained:  # a variant not yet trained has no wall time, and nothing to list
            unmeasured.update(missing)
        print(
            f"| {exp['name']} | "
            + " | ".join(fmt(miou.get(k)) for k in steps)
            + f" | {change} | {fmt(ratio, 3)} | {NETWORKS[rule]} | {score}"
            + f" | {fmt(mean_epoch_seconds(net_dir / 'training.csv'), 1)}"
            + f" | {fmt(max_rss(exp['benchmarks'][rule]), 0)} | {fmt(max_rss(every), 0)}"
            + f" | {fmt(wall / 60 if trained else None, 1)}"
            + f" | {fmt(max_rss(own) if trained else None, 0)} |"
        )
    seeds: dict[str, list[str]] = {}
    for exp in the_plan["experiments"]:
        seeds.setdefault(exp["group"], []).append(exp["name"])
    if any(len(names) > 1 for names in seeds.values()):
        print("\nper variant: mean ± sample std over its scored seeds (their number)\n")
        print("| variant | " + " | ".join(steps) + " |")
        print("|---" * (len(steps) + 1) + "|")
        for group, names in seeds.items():
            cells = [
                mean_std(seed_stats([scored.get(n, {}).get(k, {}).get("miou") for n in names]))
                for k in steps
            ]
            print(f"| {group} | " + " | ".join(cells) + " |")
    if unmeasured:
        print(
            "\nnot in the method wall times (no benchmark file): " + ", ".join(sorted(unmeasured))
        )
    per_class = {
        name: {key: data.get("per_class", {}) for key, data in by_step.items()}
        for name, by_step in scored.items()
    }
    if args.classes:
        first = the_plan["experiments"][0]["name"]
        print(f"\nper-class IoU, change against {first} (last train-split step)\n")
        print_per_class(
            {n: train_masks(v) or {} for n, v in per_class.items()}, first, args.classes
        )
        val = {n: v["seg"] for n, v in per_class.items() if "seg" in v}
        if first in val and len(val) > 1:
            print(f"\nper-class IoU of the segmentation network (val), change against {first}\n")
            print_per_class(val, first, args.classes)
    if args.where:
        step = args.where_step or steps[0]
        if step not in steps:
            parser.error(
                f"--where-step {step!r}: not a scored step of this config ({', '.join(steps)})"
            )
        print(f"\n{step}: recall of each class, and the labels its missed pixels go to\n")
        print_header(args.where)
        for name, by_step in scored.items():
            if step not in by_step:
                continue
            data = by_step[step]
            cells = []
            for cls in args.where:
                if cls not in data["labels"]:
                    parser.error(
                        f"--where {cls!r}: not a label of {name}'s {step} "
                        f"({', '.join(data['labels'])})"
                    )
                lost = taken_by(data["confusion"], data["labels"], cls)
                cells.append(
                    f"{fmt(data['recall'][cls], 1)}; "
                    + ", ".join(f"{n} {v:.0f} %" for n, v in lost)
                )
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

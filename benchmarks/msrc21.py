"""Run the workflow on MSRC-21 and print each stage's mIoU, wall time and peak memory.

Pseudo-label stages (cam .. pseudo) are scored on the train split, the segmentation
network (seg, and seg_full trained on the ground truth) on val.

    .venv/bin/python benchmarks/msrc21.py --data ../shared/data/msrc21 [--until cam]

The run uses configs/msrc21.yaml with ``dataset.root`` set to ``--data``; results go to
``results/<run>/``. Peak memory is the largest ``max_rss`` that Snakemake's ``benchmark:``
recorded for any job (each job's process tree).
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

from wsss.workflow.pipeline import steps

ROOT = Path(__file__).resolve().parent.parent
STAGES = tuple(step.key for step in steps("psa"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="MSRC-21 in VOC layout")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="last stage")
    parser.add_argument("--run", default="msrc21", help="run name (results/<run>/)")
    parser.add_argument("--cores", default="all")
    args = parser.parse_args()

    override = {"run": args.run, "dataset": {"root": str(args.data.resolve())}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(override, f)
    # The whole chain (with the report figures) is the workflow's default target.
    targets = (
        ["all"]
        if args.until == STAGES[-1]
        else [
            f"results/{args.run}/metrics/{s}.json" for s in STAGES[: STAGES.index(args.until) + 1]
        ]
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        *targets,
        "--cores",
        args.cores,
        "--configfile",
        str(ROOT / "configs/msrc21.yaml"),
        f.name,
        "--quiet",
        "rules",
    ]
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.time() - start

    run_dir = ROOT / "results" / args.run
    rows = []
    for stage in STAGES[: STAGES.index(args.until) + 1]:
        m = json.loads((run_dir / "metrics" / f"{stage}.json").read_text())
        floor = m["floor"]["miou"] if "floor" in m else float("nan")
        rows.append((stage, m["miou"], floor, m.get("best", {}) or m.get("coverage", "")))
    peak_mb, job_seconds = 0.0, {}
    for tsv in sorted((run_dir / "benchmarks").glob("*.tsv")):
        with tsv.open() as fh:
            record = list(csv.DictReader(fh, delimiter="\t"))[-1]
        peak_mb = max(peak_mb, float(record["max_rss"]))
        job_seconds[tsv.stem] = float(record["s"])

    print(f"\nMSRC-21 ({args.data}), results in {run_dir}")
    print(f"{'stage':<10} {'mIoU':>6} {'floor':>6}  best / coverage")
    for stage, miou, floor, note in rows:
        print(f"{stage:<10} {miou:6.2f} {floor:6.2f}  {note}")
    if args.until == STAGES[-1]:
        weak, full = rows[-2][1], rows[-1][1]
        print(f"weak / full supervision: {weak:.2f} / {full:.2f} = {weak / full:.3f}")
    print(f"wall time of this invocation: {wall / 60:.1f} min (jobs already done are not rerun)")
    print("job seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in job_seconds.items()))
    print(f"peak memory (largest job max_rss): {peak_mb / 1024:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

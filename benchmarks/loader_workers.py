"""One CAM training alone with 0, 1 and 2 data-loading workers: seconds per training step,
and the part of it spent waiting for the loader (``data_seconds`` of training.csv), so that
the workflow's ``num_workers`` can be chosen for a machine with few cores, where a worker
process takes a core from the training's threads.

    .venv/bin/python benchmarks/loader_workers.py [--threads 2] [--epochs 2] [--workers 0 1 2]

The training is the one of ``benchmarks/shared_cores.py`` (`wsss train-cam` on the demo
dataset, 160 images of 160 px, batch 16: 10 steps an epoch, no held-out scoring), with
OMP_NUM_THREADS = --threads and wsss's own OpenMP wait policy. The machine should be
otherwise idle; the settings alternate (0, 1, 2, 0, 1, 2, ...) for ``--repeats`` rounds, so
that a drift of the machine's speed reaches every setting alike.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_cores import command, demo_manifest  # noqa: E402

STEPS = 10  # 160 images, batch 16


def one_training(manifest: Path, work: Path, env: dict, epochs: int, workers: int) -> tuple:
    """(s / step, data s / step) of one training, its first epoch left out when there are
    more (the first includes the warm-up of the kernels)."""
    out = work / f"run-{time.monotonic_ns()}"
    settings = argparse.Namespace(epochs=epochs, workers=workers)
    done = subprocess.run(command(manifest, out, settings), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"train-cam failed:\n{done.stderr[-2000:]}")
    with open(out / "training.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = rows[1:] or rows
    seconds = sum(float(r["seconds"]) for r in rows) / (STEPS * len(rows))
    data = sum(float(r["data_seconds"]) for r in rows) / (STEPS * len(rows))
    return seconds, data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the job")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"OMP_NUM_THREADS={args.threads}, {args.epochs} epoch(s) of {STEPS} steps (the first "
        f"left out), {args.repeats} round(s)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = demo_manifest(work)
        for _ in range(args.repeats):
            for workers in args.workers:
                results[workers].append(one_training(manifest, work, env, args.epochs, workers))
    print("| loader workers | s / step (each round) | median | of it waiting for data |")
    print("|---|---|---|---|")
    for workers, runs in results.items():
        steps = [s for s, _ in runs]
        data = statistics.median(d for _, d in runs)
        each = " / ".join(f"{s:.2f}" for s in steps)
        print(f"| {workers} | {each} | {statistics.median(steps):.2f} | {data:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

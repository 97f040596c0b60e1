"""Two CAM trainings side by side on the same cores, against one alone: seconds per training
step of each, for each OpenMP wait policy, so that a job's thread settings can be chosen
for machines whose cores are shared (several experiments on a workstation, a cluster node).

    .venv/bin/python benchmarks/shared_cores.py [--threads 2] [--epochs 1] [--policies ...]

Each training is `wsss train-cam` on the demo dataset (160 images of 160 px, batch 16:
10 steps an epoch, the workflow's settings but one epoch and no held-out scoring), run as
the workflow runs it: OMP_NUM_THREADS = --threads (Snakemake's `threads`), data-loading
workers as in config.yaml. Its time per step is the epoch's `seconds` in training.csv
divided by its steps. For each policy (the environment given to both processes), one
training alone, then two started together; the ratio is the pair's mean time per step over
the lone one's. The machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
# Environment of each policy, given explicitly (wsss sets GOMP_SPINCOUNT=10000 itself when
# the environment chooses nothing): "openmp": GNU OpenMP's default, a waiting thread spins
# 300,000 times before it sleeps; "short-spin": 10,000 times, wsss's default; "passive":
# threads sleep as soon as they wait.
POLICIES = {
    "openmp": {"GOMP_SPINCOUNT": "300000"},
    "short-spin": {"GOMP_SPINCOUNT": "10000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}


def demo_manifest(work: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from wsss.data import build_manifest
    from wsss.data.demo import generate

    generate(work / "demo", seed=0, num_train=160, num_val=48, image_size=160)
    manifest = build_manifest("demo", work / "demo", work)
    out = work / "dataset.json"
    manifest.save(out)
    return out


def command(manifest: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return [
        str(BIN / "wsss"), "train-cam", "--manifest", str(manifest), "--out", str(out / "model.pt"),
        "--state-dir", str(out / "state"), "--held-out", "", "--epochs", str(args.epochs),
        "--batch-size", "16", "--crop-size", "160", "--num-workers", str(args.workers),
        "--warmup-epochs", "0", "--health", "ignore", "--head-channels", "512",
    ]  # fmt: skip


def seconds_per_step(out: Path, steps: int, skip_first: bool = False) -> float:
    """Mean seconds per step of the training in ``out`` (its training.csv); with
    ``skip_first`` without the first epoch when there are more (workers' start-up)."""
    with open(out / "training.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if skip_first:
        rows = rows[1:] or rows
    return sum(float(r["seconds"]) for r in rows) / (steps * len(rows))


def run_together(manifest: Path, work: Path, env: dict, count: int, args) -> list[float]:  # noqa: ANN001
    outs = [work / f"run-{time.monotonic_ns()}-{i}" for i in range(count)]
    procs = [
        subprocess.Popen(command(manifest, out, args), env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for out in outs
    ]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"train-cam failed:\n{err[-2000:]}")
    return [seconds_per_step(out, args.steps) for out in outs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each job")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    args = parser.parse_args()
    args.steps = 10  # 160 images, batch 16
    print(
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"each job OMP_NUM_THREADS={args.threads}, {args.workers} loader workers, "
        f"{args.epochs} epoch(s) of {args.steps} steps\n"
    )
    print("| wait policy | s / step alone | s / step, two together | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = demo_manifest(work)
        for name in args.policies:
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), **POLICIES[name]}
            alone = run_together(manifest, work, env, 1, args)[0]
            pair = run_together(manifest, work, env, 2, args)
            ratio = sum(pair) / len(pair) / alone
            print(f"| {name} | {alone:.2f} | {pair[0]:.2f} / {pair[1]:.2f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

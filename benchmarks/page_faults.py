"""One CAM training alone, with and without the two things `wsss` does against page faults:
freed memory kept for reuse (`wsss.cli.keep_freed_memory`, against glibc's default malloc)
and loader workers started from a forkserver (`train.loader_start`, against forks of the
training): seconds per step, and the training process's user and system CPU time, page
faults and peak resident memory.

    .venv/bin/python benchmarks/page_faults.py [--threads 2] [--epochs 3] [--repeats 2]

The training is the one of ``benchmarks/shared_cores.py`` (`wsss train-cam` on the demo
dataset, 160 images of 160 px, batch 16: 10 steps an epoch, no held-out scoring, one loader
worker, channels-last). glibc's defaults are kept by giving the process a harmless
``GLIBC_TUNABLES`` (the default perturb byte), which `wsss` reads as "malloc is tuned
here". The settings alternate for ``--repeats`` rounds on an otherwise idle machine. The
CPU time and page faults are the training process's and those of the children it waited
for (a forked worker); a forkserver's workers are not its children, so theirs are not in
the figures (their work is the same either way).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_cores import command, demo_manifest, seconds_per_step  # noqa: E402

STEPS = 10  # 160 images, batch 16
GLIBC_DEFAULTS = {"GLIBC_TUNABLES": "glibc.malloc.perturb=0"}
# name -> (environment, loader start)
SETTINGS = {
    "glibc's malloc, forked workers (before)": (GLIBC_DEFAULTS, "fork"),
    "freed memory kept, forked workers": ({}, "fork"),
    "glibc's malloc, forkserver workers": (GLIBC_DEFAULTS, "forkserver"),
    "freed memory kept, forkserver workers (wsss)": ({}, "forkserver"),
}


def one_training(
    manifest: Path, work: Path, env: dict, start: str, epochs: int
) -> dict[str, float]:
    """s / step (the first epoch left out when there are more) and the process's rusage."""
    out = work / f"run-{time.monotonic_ns()}"
    settings = argparse.Namespace(epochs=epochs, workers=1)
    proc = subprocess.Popen(
        [*command(manifest, out, settings), "--loader-start", start], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"train-cam failed (status {status}); run it by hand to see why")
    return {
        "step": seconds_per_step(out, STEPS, skip_first=True),
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "faults": usage.ru_minflt,
        "peak_mb": usage.ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the job")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"OMP_NUM_THREADS={args.threads}, {args.epochs} epoch(s) of {STEPS} steps (s / step "
        f"without the first), {args.repeats} round(s); CPU time, faults and peak: the whole "
        "training process\n"
    )
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    base = {k: v for k, v in base.items() if not k.startswith("MALLOC_")}
    base["OMP_NUM_THREADS"] = str(args.threads)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = demo_manifest(work)
        for _ in range(args.repeats):
            for name, (extra, start) in SETTINGS.items():
                env = {**base, **extra}
                runs[name].append(one_training(manifest, work, env, start, args.epochs))
    print("| setting | s / step (each round) | user s | system s | page faults | peak MB |")
    print("|---|---|---|---|---|---|")
    for name, results in runs.items():
        each = " / ".join(f"{r['step']:.2f}" for r in results)

        def median(key: str, results: list = results) -> float:
            return statistics.median(r[key] for r in results)

        print(
            f"| {name} | {each} | {median('user'):.1f} | {median('sys'):.1f} | "
            f"{median('faults'):,.0f} | {median('peak_mb'):,.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

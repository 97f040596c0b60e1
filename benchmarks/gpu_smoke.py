"""The tiny workflow on the GPUs of this machine: on 1 GPU and on 2 (when there are two),
under bfloat16 and float16 autocast, with the wall time, the per-job times and the peak
memory of each GPU; every network's health and every stage's mIoU as a check that the GPU
path computes what the CPU path does.

    .venv/bin/python benchmarks/gpu_smoke.py [--out /tmp/gpu_smoke] [--dtypes bfloat16 float16]

Each case is a fresh working directory with its own results (the workflow's rules and
package come from this repository). GPU memory is sampled from ``nvidia-smi`` every 0.2 s
while the workflow runs (the peak over its jobs, per device). Without a CUDA device it
says so and exits 0, so that it can run wherever a GPU may be present.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from wsss.workflow.pipeline import steps

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# The test suite's tiny workflow (tests/test_workflow.py), on the GPU.
TINY = {
    "run": "tiny",
    "device": "cuda",
    "num_shards": 2,
    "demo": {"seed": 3, "num_train": 16, "num_val": 6, "image_size": 64},
    "cam": {
        "train": {"epochs": 2, "crop_size": 64, "head_channels": 32, "batch_size": 8,
                  "num_workers": 0, "health": "warn", "warmup_epochs": 0},
        "infer": {"scales": [1.0, 0.5]},
    },
    "affinity": {
        "train": {"epochs": 1, "crop_size": 64, "batch_size": 8, "num_workers": 0,
                  "health": "warn"},
        "random_walk": {"logt": 4},
    },
    "seg": {
        "train": {"epochs": 1, "crop_size": 64, "batch_size": 8, "num_workers": 0,
                  "head_channels": 16, "health": "warn"},
        "infer": {"scales": [1.0]},
    },
}  # fmt: skip
AMP_SECTIONS = (("cam", "train"), ("cam", "infer"), ("affinity", "train"),
                ("affinity", "random_walk"), ("seg", "train"), ("seg", "infer"))  # fmt: skip


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class MemorySampler(threading.Thread):
    """The largest memory.used (MiB) nvidia-smi reports per GPU index while it runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout
            for line in out.strip().splitlines():
                index, used = (int(x) for x in line.split(","))
                self.peak[index] = max(self.peak.get(index, 0), used)
            self.stop.wait(0.2)


def config_for(dtype: str) -> dict:
    config = json.loads(json.dumps(TINY))
    for section, part in AMP_SECTIONS:
        config[section].setdefault(part, {}).update(amp=True, amp_dtype=dtype)
    return config


def run_case(work: Path, gpus: int, dtype: str) -> dict:
    """One workflow run in ``work`` on ``gpus`` GPUs under ``dtype`` autocast."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "config.yaml").write_text(yaml.safe_dump(config_for(dtype)))
    command = [
        str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
        "--configfile", str(work / "config.yaml"), "--cores", str(2 * gpus),
        "--resources", f"gpu={gpus}", "--quiet", "rules",
    ]  # fmt: skip
    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    wall = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    if done.returncode != 0:
        raise SystemExit(f"{gpus} GPU(s), {dtype}: the workflow failed\n{done.stderr[-3000:]}")
    run = work / "results" / "tiny"
    scores = {}
    for step in steps("psa"):
        path = run / "metrics" / f"{step.key}.json"
        if path.is_file():
            scores[step.key] = json.loads(path.read_text())["miou"]
    jobs = {}
    for tsv in sorted((run / "benchmarks").glob("*.tsv")):
        lines = tsv.read_text().splitlines()
        jobs[tsv.stem] = float(lines[1].split("\t")[0])
    health = {
        str(p.parent.relative_to(run)): json.loads(p.read_text()).get("healthy")
        for p in run.glob("*/health.json")
    }
    return {"gpus": gpus, "dtype": dtype, "wall_s": round(wall, 1), "peak_mib": sampler.peak,
            "miou": scores, "jobs_s": jobs, "healthy": health}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_smoke"))
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"],
                        choices=["bfloat16", "float16"])  # fmt: skip
    args = parser.parse_args()
    count = gpu_count()
    if count == 0:
        print("no CUDA device visible: nothing to measure")
        return 0
    results = []
    for gpus in [n for n in (1, 2) if n <= count]:
        for dtype in args.dtypes:
            case = run_case(args.out / f"{gpus}gpu-{dtype}", gpus, dtype)
            results.append(case)
            print(json.dumps(case), flush=True)
    print()
    print("| GPUs | autocast | wall (s) | peak MiB per GPU | " + " | ".join(
        s.key for s in steps("psa")) + " |")  # fmt: skip
    print("|---" * (4 + len(steps("psa"))) + "|")
    for case in results:
        peaks = ", ".join(f"{i}: {m}" for i, m in sorted(case["peak_mib"].items()))
        miou = " | ".join(f"{case['miou'].get(s.key, float('nan')):.2f}" for s in steps("psa"))
        print(f"| {case['gpus']} | {case['dtype']} | {case['wall_s']} | {peaks} | {miou} |")
    (args.out / "gpu_smoke.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

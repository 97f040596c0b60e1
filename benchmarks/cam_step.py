"""Time per training step and peak memory of the CAM network with each HFPL variant and each
patch-learning model (the same batch for all), so that their cost is measured apart from a
whole run.

    .venv/bin/python benchmarks/cam_step.py [--batch 16] [--crop 160] [--steps 5] [--threads N]

The CAM network of the workflow (EfficientNet-Lite0, output stride 16, 512-channel head) on
a batch of random crops with random labels; a step is forward, loss, backward and the SGD
update. Each variant runs in a fresh process (this script with a hidden --measure flag):
its time is the median of --steps steps after one warm-up step, its peak memory the growth
of ru_maxrss over the value after the model and batch were made. The defaults are the demo's
batch (16 crops of 160 px: a 10 x 10 feature grid); MSRC-21's preset is --batch 8 --crop 256.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from wsss.methods.hfpl import AddOn, classifier_loss  # noqa: E402
from wsss.models.backbones import build_backbone  # noqa: E402
from wsss.models.cam import CAMNet  # noqa: E402

VARIANTS = {
    "plain": {},
    "sampling": {"sampling_weight": 0.2},
    "similarity": {"similarity_weight": 1.0},
    "both": {"sampling_weight": 0.2, "similarity_weight": 1.0},
    "sampling-multinomial": {"sampling_weight": 0.2, "posterior": "multinomial"},
    "similarity-multinomial": {"similarity_weight": 1.0, "posterior": "multinomial"},
    "both-multinomial": {
        "sampling_weight": 0.2,
        "similarity_weight": 1.0,
        "posterior": "multinomial",
    },
}
# Progressive Patch Learning: settings of the model (CAMNet), beside the add-on's; a
# progressive stage costs what patch learning at its k does.
MODELS = {
    "patches-2": {"patches": 2},
    "patches-4": {"patches": 4},
    "explicit": {"fusion": (4, 2, 1)},
    "patches-4-hfpl": {"patches": 4},
}
VARIANTS |= {name: {} for name in MODELS} | {"patches-4-hfpl": VARIANTS["both"]}


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CAMNet(
        build_backbone("lite0", 16, "imagenet"), args.classes, 512, **MODELS.get(args.variant, {})
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.rand(args.batch, 3, args.crop, args.crop) * 255
    targets = (torch.rand(args.batch, args.classes) < 0.3).float()
    addon = AddOn(**VARIANTS[args.variant], background=True)
    model.train()

    def step() -> None:
        if addon.active:
            loss, _ = classifier_loss(model.logit_maps(images), images, targets, addon)
        else:
            loss = F.multilabel_soft_margin_loss(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return {"time": statistics.median(times), "peak_mib": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load "
        f"average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; batch {args.batch} x "
        f"{args.crop} px, {args.classes} classes, median of {args.steps} steps\n"
    )
    print("| variant | s / step | vs plain | peak above the model (MiB) |")
    print("|---|---|---|---|")
    plain = None
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--measure", "--variant", variant,
               "--batch", str(args.batch), "--crop", str(args.crop),
               "--classes", str(args.classes), "--steps", str(args.steps),
               "--threads", str(args.threads)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        plain = plain or result["time"]
        print(
            f"| {variant} | {result['time']:.3f} | {result['time'] / plain:.2f}x | "
            f"{result['peak_mib']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

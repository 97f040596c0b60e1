"""One training step of the CAM network and of the segmentation network against the bound
the machine's matrix-multiply throughput sets: the step's time, its FLOPs, the bound
(FLOPs / measured GFLOP/s), and where the time goes (torch.profiler, self CPU time by
operator).

    .venv/bin/python benchmarks/step_profile.py [--threads 2] [--batch 16] [--crop 160]

The networks are the workflow's (EfficientNet-Lite0 at output stride 16; the CAM head of
512 channels, the segmentation head of config.yaml); a step is forward, loss, backward and
the SGD update on a fixed random batch (no data loading: the training's own data time is in
its training.csv). FLOPs: the forward's, counted by torch.utils.flop_counter (matrix
multiplies and convolutions), times 3 for forward and backward; the throughput is that of
float32 matrix products of --matmul-size on the same threads. The defaults are the demo's
batch; MSRC-21's preset is --batch 8 --crop 256.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from wsss.models.backbones import build_backbone  # noqa: E402
from wsss.models.cam import CAMNet  # noqa: E402


def matmul_gflops(size: int, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def median_seconds(run: Callable[[], None], repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The threads and the batch (images, crop side, classes) of the step's benchmarks."""
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=160)
    parser.add_argument("--classes", type=int, default=6)


def networks(classes: int) -> dict:
    """name -> (network, loss of its output on a batch of n images with random labels)."""
    from wsss.models.deeplab import SegNet

    def cam_loss(out: torch.Tensor, n: int) -> torch.Tensor:
        return F.multilabel_soft_margin_loss(out, (torch.rand(n, classes) < 0.3).float())

    def seg_loss(out: torch.Tensor, n: int) -> torch.Tensor:
        return F.cross_entropy(out, torch.randint(0, classes + 1, (n, *out.shape[2:])))

    cam = CAMNet(build_backbone("lite0", 16, "imagenet"), classes, 512)
    seg = SegNet(build_backbone("lite0", 16, "imagenet"), classes + 1, "psa", 256, 2)
    return {"cam": (cam, cam_loss), "seg": (seg, seg_loss)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_batch_arguments(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--top", type=int, default=8, help="operators listed per network")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gflops = matmul_gflops(args.matmul_size)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load "
        f"average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; batch {args.batch} x "
        f"{args.crop} px; float32 matmul {args.matmul_size}^2: {gflops:.1f} GFLOP/s\n"
    )
    print("| network | GFLOP / step | bound (s) | s / step | step / bound |")
    print("|---|---|---|---|---|")
    profiles = {}
    for name, (model, loss_of) in networks(args.classes).items():
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        images = torch.rand(args.batch, 3, args.crop, args.crop) * 255

        def step() -> None:
            loss = loss_of(model(images), args.batch)  # noqa: B023
            optimizer.zero_grad()  # noqa: B023
            loss.backward()
            optimizer.step()  # noqa: B023

        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(images)
        # backward: the gradients of the inputs and of the weights, each about the forward's
        # work (torch's counter overcounts the backward of grouped convolutions, most of Lite0)
        flops = 3 * counter.get_total_flops() / 1e9
        seconds = median_seconds(step, args.steps)
        bound = flops / gflops
        print(f"| {name} | {flops:.1f} | {bound:.2f} | {seconds:.2f} | {seconds / bound:.2f}x |")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        profiles[name] = prof
    for name, prof in profiles.items():
        by_op: dict[str, float] = defaultdict(float)
        for event in prof.key_averages():
            by_op[event.key] += event.self_cpu_time_total / 1e3
        total = sum(by_op.values())
        print(f"\n{name}: self CPU time by operator (one step, {total:.0f} ms)\n")
        print("| operator | ms | share |")
        print("|---|---|---|")
        for op, ms in sorted(by_op.items(), key=lambda item: -item[1])[: args.top]:
            print(f"| {op} | {ms:.0f} | {100 * ms / total:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time per training step and peak memory of the HFPL feature similarity loss: the windowed
form of wsss.methods.hfpl against the reference's all-pairs form.

    .venv/bin/python benchmarks/similarity_loss.py [--grids 32 64] [--batch 8] [--classes 21]
        [--sigma 40] [--stride 8] [--repeats 3] [--threads N] [--device cpu]

A "step" is the loss's forward and backward pass on a batch of --batch images: colours
[B, 3, g, g] in [0, 1] and the class maps of wsss.methods.hfpl.class_maps [B, 1 + C, g, g] (the
binomial posterior's max-normalised maps of smooth random logits, every class present, and
the "none" channel; the gradient flowing into the logits), sigma 40 image pixels on a
stride-8 grid (5 feature pixels, the reference's), window radius 3 sigma. Each
measurement runs in a fresh process (this script with a hidden --measure flag) so that the
peak memory is the method's own: on the CPU the growth of ru_maxrss over its value after the
inputs are made, on CUDA torch.cuda.max_memory_allocated above the inputs. Times are the best
of --repeats; the two methods' losses are compared (relative difference, over the pairs the
window keeps: the all-pairs form restricted to the same radius).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from wsss.methods.hfpl import AddOn, class_maps, similarity_loss, similarity_loss_all_pairs  # noqa: E402


def make_inputs(batch: int, classes: int, grid: int, device: str):
    """Seeded colours [B, 3, g, g] and logits [B, C, g, g] (smooth fields plus noise)."""
    g = torch.Generator().manual_seed(grid)

    def smooth(channels: int) -> torch.Tensor:
        coarse = torch.randn(batch, channels, 5, 5, generator=g)
        field = F.interpolate(coarse, (grid, grid), mode="bilinear", align_corners=True)
        return field + 0.1 * torch.randn(batch, channels, grid, grid, generator=g)

    colours = torch.sigmoid(smooth(3))
    logits = 2 * smooth(classes)
    return colours.to(device), logits.to(device)


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    colours, logits = make_inputs(args.batch, args.classes, args.grid, args.device)
    logits.requires_grad_(True)
    radius = 3.0 * args.sigma
    present = torch.ones(args.batch, args.classes, device=args.device)

    def maps_of(z: torch.Tensor) -> torch.Tensor:
        return class_maps(z, present, AddOn())

    def loss_fn() -> torch.Tensor:
        maps = maps_of(logits)
        if args.method == "windowed":
            return similarity_loss(colours, maps, 2.5, args.sigma, radius, stride=args.stride)
        return similarity_loss_all_pairs(colours, maps, 2.5, args.sigma, stride=args.stride)

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        logits.grad = None
        start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    with torch.no_grad():
        maps = maps_of(logits)
        same = similarity_loss_all_pairs(
            colours, maps, 2.5, args.sigma, radius=radius, stride=args.stride
        )
    return {"time": min(times), "peak_mib": peak, "loss": float(loss), "windowed_ref": float(same)}


def run_one(method: str, grid: int, args: argparse.Namespace) -> dict | None:
    cmd = [
        sys.executable, __file__, "--measure", "--method", method, "--grid", str(grid),
        "--batch", str(args.batch), "--classes", str(args.classes), "--sigma", str(args.sigma),
        "--stride", str(args.stride),
        "--repeats", str(args.repeats), "--threads", str(args.threads), "--device", args.device,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"{method} at {grid}x{grid} failed: {out.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--sigma", type=float, default=40.0, help="image pixels")
    parser.add_argument("--stride", type=float, default=8.0, help="image pixels per grid cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=("windowed", "all-pairs"), help=argparse.SUPPRESS)
    parser.add_argument("--grid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return 0
    print(
        f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"B = {args.batch}, C = {args.classes}, sigma {args.sigma} image px at stride "
        f"{args.stride} ({args.sigma / args.stride:g} grid cells), window radius "
        f"{3 * args.sigma:g} px; forward + backward, best of {args.repeats}\n"
    )
    print(
        "| grid | windowed step (s) | windowed peak (MiB) | all-pairs step (s) "
        "| all-pairs peak (MiB) | speed-up | memory ratio | windowed vs all-pairs in window |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for grid in args.grids:
        ours = run_one("windowed", grid, args)
        dense = run_one("all-pairs", grid, args)
        if ours is None or dense is None:
            continue
        rel = abs(ours["loss"] - ours["windowed_ref"]) / max(abs(ours["windowed_ref"]), 1e-12)
        print(
            f"| {grid}x{grid} | {ours['time']:.3f} | {ours['peak_mib']:.0f} | "
            f"{dense['time']:.3f} | {dense['peak_mib']:.0f} | "
            f"{dense['time'] / ours['time']:.1f}x | "
            f"{dense['peak_mib'] / max(ours['peak_mib'], 1):.0f}x | rel. diff {rel:.1e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

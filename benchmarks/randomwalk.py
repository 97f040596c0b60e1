"""Time and peak memory of the sparse random walk against the dense reference.

    .venv/bin/python benchmarks/randomwalk.py [--grids 32 64 96] [--big 128] [--repeats 3]
        [--dense-max 96] [--dense-repeats 1] [--dense-timeout 1200] [--threads N] [--device cpu]
        [--busy N]

``--busy N`` starts N processes that keep a core busy each while the measurements run
(a loaded machine).

Inputs as in AffinityNet: D = 448 features (a smooth random field plus noise), C = 21 maps
(a background map and 20 class maps), radius 5, beta 8, logt 8; the same seeded inputs for both
methods. ``random_walk`` runs on every grid in --grids and on the --big grid; the dense
reference on the grids up to --dense-max. Each measurement runs in a fresh process (this
script with a hidden --measure flag), so the peak memory is the algorithm's own: on CPU the
growth of ru_maxrss over its value after imports and input creation, on CUDA
torch.cuda.max_memory_allocated over the memory held by the inputs. Times are the best of
--repeats runs (--dense-repeats for the dense reference) and include building the transition
matrix from the features.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from wsss.methods.randomwalk import dense_random_walk, random_walk  # noqa: E402

DEPTH, CHANNELS, RADIUS, BETA, LOGT = 448, 21, 5, 8.0, 8
METHODS = {"ours": random_walk, "dense": dense_random_walk}


def make_inputs(grid: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cam [21, grid, grid] in [0, 1] and features [448, grid, grid], seeded by the grid.

    The noise is added channel by channel, so input creation leaves no large freed buffer
    behind that the measured algorithm could reuse unseen.
    """
    g = torch.Generator().manual_seed(grid)
    size = (grid, grid)

    def smooth(channels: int, scale: float) -> torch.Tensor:  # [channels, grid, grid]
        coarse = torch.randn(1, channels, 6, 6, generator=g) * scale
        return F.interpolate(coarse, size=size, mode="bilinear", align_corners=True)[0]

    features = smooth(DEPTH, 0.6)
    for channel in features:
        channel.add_(torch.randn(size, generator=g), alpha=0.05)
    maps = smooth(CHANNELS - 1, 1.0).clamp_(min=0)
    maps /= maps.amax((1, 2), keepdim=True).clamp_(min=1e-6)
    cam = torch.cat([(1 - maps.amax(0, keepdim=True)) ** 16, maps])
    return cam.to(device), features.to(device)


def measure(method: str, grid: int, repeats: int, device: str, out: Path) -> dict:
    """Run one method ``repeats`` times in this process; save its output to ``out``."""
    cam, features = make_inputs(grid, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    seconds = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            result = METHODS[method](cam, features, radius=RADIUS, beta=BETA, logt=LOGT)
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    except (MemoryError, RuntimeError) as error:  # a failed CPU allocation, or CUDA OOM
        out_of_memory = isinstance(error, MemoryError) or "memory" in str(error).lower()
        return {"error": "OOM" if out_of_memory else f"error ({error})"}
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    torch.save(result.cpu(), out)
    return {"seconds": min(seconds), "peak_mib": peak_mib}


def run_child(
    args: argparse.Namespace, method: str, grid: int, repeats: int, out: Path, timeout: float | None
) -> dict:
    """Measure in a fresh process; a crash or timeout becomes an ``error`` entry."""
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        method,
        "--grid",
        str(grid),
        "--out",
        str(out),
        "--repeats",
        str(repeats),
        "--device",
        args.device,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout (> {timeout:.0f} s)"}
    if done.returncode != 0:
        killed = done.returncode < 0 or "MemoryError" in done.stderr
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {"error": "OOM (killed)" if killed else f"error ({tail[0]})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grids",
        type=int,
        nargs="+",
        default=[32, 64, 96],
        help="grid sides compared with the dense reference",
    )
    parser.add_argument("--big", type=int, default=128, help="grid side for ours alone (0: none)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours per grid (best kept)")
    parser.add_argument("--dense-repeats", type=int, default=1, help="runs of the dense reference")
    parser.add_argument(
        "--dense-max", type=int, default=96, help="skip the dense reference above this grid side"
    )
    parser.add_argument(
        "--dense-timeout",
        type=float,
        default=1200.0,
        help="seconds before a dense measurement is abandoned",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        help="busy processes beside the measurements (a loaded machine)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--measure", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--grid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(args.measure, args.grid, args.repeats, args.device, args.out)))
        return 0

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        return report(args)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def report(args: argparse.Namespace) -> int:
    """Print the table (the measurements run in child processes)."""
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device} "
        f"({device_name}), {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {args.busy} busy processes beside"
    )
    print(
        f"D = {DEPTH}, C = {CHANNELS}, radius {RADIUS}, beta {BETA:g}, logt {LOGT}; ours: best "
        f"of {args.repeats}, dense: best of {args.dense_repeats}\n"
    )
    print(
        "| grid | N | ours time (s) | ours peak (MiB) | dense time (s) | dense peak (MiB) "
        "| speed-up | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    grids = [(g, True) for g in args.grids] + ([(args.big, False)] if args.big else [])
    with tempfile.TemporaryDirectory() as tmp:
        for grid, compare in grids:
            ours_out, dense_out = Path(tmp) / f"ours{grid}.pt", Path(tmp) / f"dense{grid}.pt"
            ours = run_child(args, "ours", grid, args.repeats, ours_out, None)
            if not compare:
                dense = {"error": "-"}
            elif grid > args.dense_max:
                dense = {"error": "skipped"}
            else:
                dense = run_child(
                    args, "dense", grid, args.dense_repeats, dense_out, args.dense_timeout
                )
            cells = [f"{grid}x{grid}", str(grid * grid)]
            for result in (ours, dense):
                if "error" in result:
                    cells += [result["error"], "-"]
                else:
                    cells += [f"{result['seconds']:.3f}", f"{result['peak_mib']:.0f}"]
            if "error" in ours or "error" in dense:
                cells += ["-", "-"]
            else:
                diff = (torch.load(ours_out) - torch.load(dense_out)).abs().max().item()
                cells += [f"{dense['seconds'] / ours['seconds']:.1f}x", f"{diff:.2e}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

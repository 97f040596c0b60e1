"""A training step's layers against their roofline: each convolution, batch norm and
activation of the CAM (or segmentation) network timed alone, forward and backward, beside
the least time its arithmetic (FLOPs / the measured matmul throughput) and its memory
traffic (bytes / the measured copy bandwidth) allow; summed by kind of layer.

    .venv/bin/python benchmarks/roofline.py [--threads 2] [--batch 16] [--crop 160] [--net cam]

A layer's roofline time is max(FLOPs / matmul GFLOP/s, bytes / copy GB/s). FLOPs: forward
2 N C_out H_out W_out (C_in / groups) k_h k_w, backward twice that (input and weight
gradients). Bytes, float32, the least a layer must move: forward reads its input and
writes its output; backward reads the output gradient and the input and writes the input
gradient (plus three passes over the weights); batch norm in training mode reads its input
twice forward (statistics, then normalisation) and three times backward. Activations read
and write once forward, read two tensors and write one backward. The throughputs are the
machine's at ``--threads`` threads. Each layer runs on its own input shape, taken from one
forward pass of the whole network on the step's batch; ``--channels-last`` runs every layer
in that memory format. The step itself (the same as ``benchmarks/step_profile.py``) is timed
once more for the sum's context: what the layers do not explain is the rest of the step
(pooling, losses, the optimiser, pads, autograd bookkeeping).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from step_profile import add_batch_arguments, matmul_gflops, median_seconds, networks  # noqa: E402

FLOAT = 4  # bytes


@dataclass
class Layer:
    """One layer of the network on its input shape: its kind, work and measured time."""

    kind: str
    flops: float  # forward + backward
    bytes: float  # forward + backward, the least traffic
    seconds: float = 0.0


def copy_gbs(megabytes: int = 256, repeats: int = 10) -> float:
    """Memory bandwidth of a large float32 copy (bytes read + written per second), GB/s."""
    a = torch.rand(megabytes * 2**20 // FLOAT)
    b = torch.empty_like(a)
    b.copy_(a)
    start = time.perf_counter()
    for _ in range(repeats):
        b.copy_(a)
    return 2 * a.numel() * FLOAT * repeats / (time.perf_counter() - start) / 1e9


def kind_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise conv"
        return "1x1 conv" if module.kernel_size == (1, 1) else "dense conv (k > 1)"
    if isinstance(module, nn.BatchNorm2d):
        return "batch norm"
    return None


ACTIVATIONS = {F.relu: "relu", F.relu6: "relu6", torch.relu: "relu"}


class Activations(TorchFunctionMode):
    """Records the input shape of every functional activation called under it (the
    backbones call ``F.relu6``, the heads ``nn.ReLU``, which calls ``F.relu``)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Callable, torch.Size]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in ACTIVATIONS:
            self.seen.append((ACTIVATIONS[func], args[0].shape))
        return func(*args, **(kwargs or {}))


def work(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(FLOPs, bytes) of the module's forward and backward on input x giving output y."""
    nx, ny = x.numel() * FLOAT, y.numel() * FLOAT
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        forward = 2.0 * y.numel() * (module.in_channels // module.groups) * kh * kw
        weights = module.weight.numel() * FLOAT
        return 3 * forward, (nx + ny) + (ny + nx + nx) + 3 * weights
    return 0.0, (2 * nx + ny) + (3 * nx + nx)  # batch norm, training mode


def activation_bytes(shape: torch.Size) -> float:
    n = FLOAT * shape.numel()
    return (n + n) + (2 * n + n)


def time_layer(module: Callable, shape: torch.Size, fmt: torch.memory_format, steps: int) -> float:
    """Median seconds of forward + backward of ``module`` (a layer or an activation
    function) alone on a random input."""
    x = torch.randn(shape).to(memory_format=fmt).requires_grad_(True)
    grad = torch.randn_like(module(x))

    return median_seconds(lambda: module(x).backward(grad), steps)


def layers_of(
    model: nn.Module, images: torch.Tensor, fmt: torch.memory_format, steps: int
) -> list[Layer]:
    """Every convolution, batch norm and activation of ``model`` on its input in one
    forward pass of ``images``, timed alone."""
    seen: list[tuple[nn.Module, str, torch.Size, float, float]] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        flops, nbytes = work(module, inputs[0], output)
        seen.append((module, kind_of(module), inputs[0].shape, flops, nbytes))

    handles = [m.register_forward_hook(hook) for m in model.modules() if kind_of(m)]
    activations = Activations()
    with torch.no_grad(), activations:
        model(images)
    for handle in handles:
        handle.remove()
    layers = [
        Layer(kind, flops, nbytes, time_layer(module, shape, fmt, steps))
        for module, kind, shape, flops, nbytes in seen
    ]
    for name, shape in activations.seen:
        function = getattr(F, name)
        seconds = time_layer(function, shape, fmt, steps)
        layers.append(Layer(f"activation ({name})", 0.0, activation_bytes(shape), seconds))
    return layers


def step_seconds(model: nn.Module, loss_of: Callable, images: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        loss = loss_of(model(images), images.shape[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(step, steps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_batch_arguments(parser)
    parser.add_argument("--net", choices=("cam", "seg"), default="cam")
    parser.add_argument("--steps", type=int, default=5, help="timed repeats of each layer")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    gflops, gbs = matmul_gflops(1024), copy_gbs()
    model, loss_of = networks(args.classes)[args.net]
    model.train().to(memory_format=fmt)
    images = (torch.rand(args.batch, 3, args.crop, args.crop) * 255).to(memory_format=fmt)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, load "
        f"average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.net} network, batch "
        f"{args.batch} x {args.crop} px, {'channels-last' if args.channels_last else 'NCHW'}; "
        f"float32 matmul {gflops:.1f} GFLOP/s, copy {gbs:.1f} GB/s\n"
    )
    layers = layers_of(model, images, fmt, args.steps)
    by_kind: dict[str, list[Layer]] = defaultdict(list)
    for layer in layers:
        by_kind[layer.kind].append(layer)
    print(
        "| kind | layers | GFLOP | GB (least) | s measured | GFLOP/s | GB/s "
        "| s roofline | measured / roofline |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    total = roof = 0.0
    for kind, group in sorted(by_kind.items(), key=lambda item: -sum(x.seconds for x in item[1])):
        flops = sum(x.flops for x in group) / 1e9
        nbytes = sum(x.bytes for x in group) / 1e9
        seconds = sum(x.seconds for x in group)
        bound = sum(max(x.flops / 1e9 / gflops, x.bytes / 1e9 / gbs) for x in group)
        total, roof = total + seconds, roof + bound
        print(
            f"| {kind} | {len(group)} | {flops:.1f} | {nbytes:.2f} | {seconds:.3f} | "
            f"{flops / seconds:.1f} | {nbytes / seconds:.1f} | {bound:.3f} | "
            f"{seconds / bound:.2f}x |"
        )
    step = step_seconds(model, loss_of, images, args.steps)
    print(
        f"| all layers | {len(layers)} | | | {total:.3f} | | | {roof:.3f} | {total / roof:.2f}x |"
    )
    print(
        f"\nThe whole step: {step:.3f} s, {step / roof:.2f}x the layers' roofline sum; "
        f"the layers alone {total:.3f} s ({100 * total / step:.0f} % of it)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

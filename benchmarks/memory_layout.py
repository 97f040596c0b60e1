"""One demo CAM training alone with `--channels-last` and `--no-channels-last`, each with
the CPU's own torch kernels and with AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2``, as on a CPU without AVX-512): seconds per step, and the layout
the training chose (its log). `train.channels_last` applies only where it pays
(`wsss.training.loop.channels_last_pays`), so with AVX2 kernels both settings train NCHW.

    .venv/bin/python benchmarks/memory_layout.py [--epochs 3] [--repeats 2]
    .venv/bin/python benchmarks/memory_layout.py --inference RUN --manifest DATASET_JSON

The training is that of ``benchmarks/shared_cores.py`` (160 images of 160 px, batch 16: 10
steps an epoch, one loader worker, 2 threads); the first epoch is left out.

``--inference``: instead, the inference of the trained networks of a run directory (its
``cam/``, ``aff/`` and ``seg/model.pt``) on the manifest's val images, NCHW against
channels-last, each with both kinds of kernels, 2 threads: the CAMs (scales 1, 0.5, 1.5, 2
with flips), AffinityNet's features, the segmentation (scales 0.5 to 1.5 with flips), three
rounds each after a warm-up on 4 images: milliseconds per image and the largest difference
between the two layouts' outputs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_cores import command, demo_manifest, seconds_per_step  # noqa: E402

STEPS = 10  # 160 images, batch 16
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
KERNELS = (("the CPU's own", {}), ("AVX2", AVX2))  # name, environment added
NETWORKS = ("cam", "aff", "seg")


def time_inference(run: Path, manifest_file: Path, network: str) -> str:
    """Table cells for one network: ms / image in NCHW, then in channels-last (three rounds
    each, alternating), and the largest absolute difference of their outputs."""
    import time

    import torch

    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import Manifest, read_image
    from wsss.methods.inference import multiscale_cams, segment
    from wsss.methods.randomwalk import affinity_features
    from wsss.models.registry import load_model

    torch.set_num_threads(2)
    records = Manifest.load(manifest_file).split("val")
    images = [to_tensor(read_image(r.image)) for r in records]
    kind = {"aff": "affinity"}.get(network, network)

    def infer(model: torch.nn.Module, index: int) -> torch.Tensor:
        if network == "cam":
            scales = (1.0, 0.5, 1.5, 2.0)
            return multiscale_cams(model, images[index], records[index].labels, scales, True)
        if network == "aff":
            with torch.no_grad():
                return affinity_features(model, images[index])
        return segment(model, [images[index]], (0.5, 0.75, 1.0, 1.25, 1.5), True)[0]

    times: dict[str, list[float]] = {"NCHW": [], "channels-last": []}
    outputs: dict[str, list[torch.Tensor]] = {}
    for layout in ("NCHW", "channels-last") * 3:
        model = load_model(run / network / "model.pt", kind).model
        if layout == "channels-last":
            model = model.to(memory_format=torch.channels_last)
        for i in range(4):  # kernels chosen, memory allocated
            infer(model, i)
        start = time.perf_counter()
        out = [infer(model, i) for i in range(len(images))]
        times[layout].append(1000 * (time.perf_counter() - start) / len(images))
        outputs.setdefault(layout, out)
    diff = max((a - b).abs().max().item() for a, b in zip(*outputs.values()))
    each = [" / ".join(f"{t:.0f}" for t in times[k]) for k in times]
    return f"{each[0]} | {each[1]} | {diff:.1e}"


def inference_table(run: Path, manifest: Path, base: dict[str, str]) -> None:
    print("| network | kernels | NCHW ms / image | channels-last ms / image | max difference |")
    print("|---|---|---|---|---|")
    for network in NETWORKS:
        for kernels, extra in KERNELS:
            args = ["--time", network, "--inference", str(run), "--manifest", str(manifest)]
            done = subprocess.run(
                [sys.executable, __file__, *args], env={**base, **extra},
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            print(f"| {network} | {kernels} | {done.stdout.strip()} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--inference", type=Path, metavar="RUN", help="time inference instead")
    parser.add_argument("--manifest", type=Path, help="the run's dataset.json (--inference)")
    parser.add_argument("--time", choices=NETWORKS, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in AVX2}
    base["OMP_NUM_THREADS"] = "2"
    if args.inference and not args.manifest:
        parser.error("--inference needs --manifest")
    if args.time:
        print(time_inference(args.inference, args.manifest, args.time))
        return 0
    if args.inference:
        inference_table(args.inference, args.manifest, base)
        return 0
    print("| kernels | setting | layout trained | s / step (each round) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = demo_manifest(work)
        for kernels, extra in KERNELS:
            for flag in ("--channels-last", "--no-channels-last"):
                steps, layout = [], "?"
                for round_ in range(args.repeats):
                    out = work / f"{len(extra)}{flag}{round_}"
                    settings = argparse.Namespace(epochs=args.epochs, workers=1)
                    done = subprocess.run(
                        [*command(manifest, out, settings), flag], env={**base, **extra},
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    )  # fmt: skip
                    if done.returncode != 0:
                        raise SystemExit(f"train-cam failed:\n{done.stderr[-2000:]}")
                    layout = "channels-last" if "channels-last memory" in done.stderr else "NCHW"
                    steps.append(seconds_per_step(out, STEPS, skip_first=True))
                each = " / ".join(f"{s:.2f}" for s in steps)
                print(f"| {kernels} | `{flag}` | {layout} | {each} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

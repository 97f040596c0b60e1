"""One demo CAM training alone with `--channels-last` and `--no-channels-last`, each with
the CPU's own torch kernels and with AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2``, as on a CPU without AVX-512): seconds per step, and the layout
the training chose (its log). `train.channels_last` applies only where it pays
(`wsss.training.loop.channels_last_pays`), so with AVX2 kernels both settings train NCHW.

    .venv/bin/python benchmarks/memory_layout.py [--epochs 3] [--repeats 2]

The training is that of ``benchmarks/shared_cores.py`` (160 images of 160 px, batch 16: 10
steps an epoch, one loader worker, 2 threads); the first epoch is left out.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in AVX2}
    base["OMP_NUM_THREADS"] = "2"
    print("| kernels | setting | layout trained | s / step (each round) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = demo_manifest(work)
        for kernels, extra in (("the CPU's own", {}), ("AVX2", AVX2)):
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

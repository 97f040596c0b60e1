"""The random walk's two parts (transition matrix, 256 steps) timed apart with 2 threads and
with 1, and the whole walk (which runs on one thread on the CPU), at a 64x64 grid.

    .venv/bin/python benchmarks/randomwalk_threads.py

The inputs are those of benchmarks/randomwalk.py. Run it on an idle machine and beside
busy processes to see how the thread count interacts with the load.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from randomwalk import make_inputs  # noqa: E402

from wsss.methods.randomwalk import random_walk, transition_matrix  # noqa: E402


def main() -> int:
    cam, features = make_inputs(64, "cpu")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        matrix = transition_matrix(features, 5, 8.0)
        build = time.perf_counter() - start
        walked = cam.reshape(cam.shape[0], -1).t().contiguous()
        start = time.perf_counter()
        for _ in range(256):
            walked = matrix @ walked
        steps = time.perf_counter() - start
        start = time.perf_counter()
        random_walk(cam, features)
        whole = time.perf_counter() - start
        print(f"{threads} threads: matrix {build:.3f} s, 256 steps {steps:.3f} s; "
              f"random_walk {whole:.3f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

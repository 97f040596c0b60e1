"""Time ``wsss --help`` and ``wsss <stage> --help`` (fresh processes) and check that torch
is not imported to answer them.

    .venv/bin/python benchmarks/cli_help.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from wsss.stages import registry


def timed(args: list[str], repeat: int) -> float:
    """Median wall seconds of ``wsss ARGS`` in a fresh interpreter."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "wsss.cli", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (median)")
    args = parser.parse_args()
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from wsss.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    print(f"torch imported to build the parser: {probe.stdout.strip()}")
    rows = [("wsss --help", timed(["--help"], args.repeat))]
    for name in registry():
        rows.append((f"wsss {name} --help", timed([name, "--help"], args.repeat)))
    for label, seconds in rows:
        print(f"{label:<36} {seconds * 1000:7.0f} ms")
    print(f"slowest: {max(s for _, s in rows) * 1000:.0f} ms (median of {args.repeat} runs each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

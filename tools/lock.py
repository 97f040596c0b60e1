"""Write requirements.lock: the exact version and the sha256 of every package that
``pip install '.[workflow,test,crf,tensorboard,export,convert]'`` installs on this machine,
from pip's own resolution (``pip install --dry-run --ignore-installed --report``). The
versions of an existing lock are kept (as pip constraints), so that adding a dependency
moves no other pin; ``--fresh`` resolves everything anew.

    python tools/lock.py [--out requirements.lock]
    python tools/lock.py --out requirements-cu126.lock --torch 2.7.1 --torchvision 0.22.1

``--torch`` / ``--torchvision`` pin another release of the two (the second lock, for GPUs
and drivers the first one's build does not serve); the pins of the torch build's own
dependencies (its CUDA libraries, triton) are then resolved anew. A new lock starts from
requirements.lock's pins, so that the two differ in the torch build only.

The hashes are those of the files pip chose here (Linux x86_64, this Python), so the lock
installs on that platform; elsewhere install from pyproject.toml's ranges instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


EXTRAS = "workflow,test,crf,tensorboard,export,convert"
# The torch build's own dependencies: resolved anew when --torch changes the build.
BUILD = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def resolve(target: str, keep: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, version, sha256) of every distribution pip would install for ``target``, the
    versions in ``keep`` (name -> version) held."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(keep.items())))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), "-c", str(constraints), target],
            cwd=ROOT,
            check=True,
        )  # fmt: skip
        chosen = json.loads(report.read_text())["install"]
    found = []
    for item in chosen:
        name = item["metadata"]["name"].lower().replace("_", "-").replace(".", "-")
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if name == "wsss":
            continue
        if "sha256" not in hashes:
            raise SystemExit(f"pip reported no sha256 for {name} ({item['download_info']['url']})")
        found.append((name, item["metadata"]["version"], hashes["sha256"]))
    return sorted(found)


def pins_of(lock: str) -> dict[str, str]:
    """name -> version of every package of a lock file."""
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", lock, re.M))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument("--fresh", action="store_true", help="keep no pin of the old lock")
    parser.add_argument("--torch", help="torch release to pin (e.g. 2.7.1)")
    parser.add_argument("--torchvision", help="torchvision release to pin (with --torch)")
    args = parser.parse_args()
    if bool(args.torch) != bool(args.torchvision):
        parser.error("--torch and --torchvision go together: a torchvision is built for one torch")
    # the lock's own pins, or for a new lock requirements.lock's: the two locks then differ
    # in the torch build only
    base = args.out if args.out.is_file() else ROOT / "requirements.lock"
    keep = {} if args.fresh or not base.is_file() else pins_of(base.read_text())
    if args.torch:
        keep = {name: v for name, v in keep.items() if not BUILD.match(name)}
        keep.update(torch=args.torch, torchvision=args.torchvision)
    pins = resolve(f".[{EXTRAS}]", keep)
    python = ".".join(platform.python_version_tuple()[:2])
    lines = [
        f"# Exact versions and hashes of wsss's dependencies with its extras {EXTRAS},",
        f"# as pip resolved them on {platform.system()} {platform.machine()}, Python {python}.",
        "# Written by `make lock` (tools/lock.py); installed by `make` with --require-hashes.",
    ]
    lines += [f"{name}=={version} \\\n    --hash=sha256:{sha}" for name, version, sha in pins]
    tmp = args.out.with_name(f".{args.out.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(pins)} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())

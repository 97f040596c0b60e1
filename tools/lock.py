"""Write requirements.lock: the exact version and the sha256 of every package that
``pip install '.[workflow,test,crf,tensorboard,export,convert]'`` installs on this machine,
from pip's own resolution (``pip install --dry-run --ignore-installed --report``). The
versions of an existing lock are kept (as pip constraints), so that adding a dependency
moves no other pin; ``--fresh`` resolves everything anew.

    python tools/lock.py [--out requirements.lock]

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
    args = parser.parse_args()
    keep = {} if args.fresh or not args.out.is_file() else pins_of(args.out.read_text())
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

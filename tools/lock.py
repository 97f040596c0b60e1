"""Write requirements.lock: the exact version and the sha256 of every package that
``pip install '.[workflow,test]'`` installs on this machine, from pip's own resolution
(``pip install --dry-run --ignore-installed --report``).

    python tools/lock.py [--out requirements.lock]

The hashes are those of the files pip chose here (Linux x86_64, this Python), so the lock
installs on that platform; elsewhere install from pyproject.toml's ranges instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def resolve(target: str) -> list[tuple[str, str, str]]:
    """(name, version, sha256) of every distribution pip would install for ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--report", str(report), target],
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "requirements.lock")
    args = parser.parse_args()
    pins = resolve(".[workflow,test]")
    python = ".".join(platform.python_version_tuple()[:2])
    lines = [
        "# Exact versions and hashes of wsss's dependencies with its workflow and test extras,",
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

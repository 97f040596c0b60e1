"""Atomic file writes: every artefact is written under a temporary name and renamed.

A job killed half-way leaves at most a ``*.tmp-*`` file behind, never a file with the
final name that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def temp_name(path: Path) -> Path:
    """The temporary sibling of ``path`` used while it is being written; temporary
    siblings that killed writers of the same file left behind are removed first, except
    inside a temporary directory (new, so nothing is stale there), where the per-image
    files of a shard are written and a directory scan per file would cost O(n^2)."""
    if ".tmp-" not in path.parent.name:
        remove_stale(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale(path: Path) -> list[Path]:
    """Delete the ``.<name>.tmp-PID`` siblings of ``path`` whose process no longer runs on
    this machine (a killed job's leftovers); returns what was deleted."""
    removed = []
    prefix = f".{path.name}.tmp-"
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        pid_text = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on error delete it."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` (a directory
    that may exist), on error it is deleted."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` atomically (the object must load with ``weights_only=True``)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_png(path: str | os.PathLike[str], image: Any) -> None:
    """Save a PIL image as PNG, atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")

"""Datasets: each loader turns a native layout into a :class:`~wsss.data.manifest.Manifest`."""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

from wsss.data.manifest import DatasetError, Manifest

KINDS = ("demo", "voc", "msrc", "coco", "folder")
# Each kind's loader module and the keyword arguments of its build() that the kind itself
# sets (not options a config may pass).
LOADERS: dict[str, tuple[str, frozenset[str]]] = {
    "demo": ("wsss.data.voc", frozenset({"has_background", "name"})),
    "voc": ("wsss.data.voc", frozenset()),
    "msrc": ("wsss.data.voc", frozenset({"has_background", "name"})),
    "coco": ("wsss.data.coco", frozenset({"mask_dir"})),
    "folder": ("wsss.data.folder", frozenset()),
}


def unknown_options(kind: str, options: dict[str, Any]) -> list[str]:
    """A problem line for each of ``options`` that the ``kind`` loader does not take."""
    module, passed = LOADERS[kind]
    build = importlib.import_module(module).build
    allowed = sorted(set(inspect.signature(build).parameters) - passed - {"root"})
    return [
        f"dataset.options.{option}: not an option of the dataset.kind {kind} loader "
        f"(allowed: {', '.join(allowed)})"
        for option in options
        if option not in allowed
    ]


def build_manifest(
    kind: str, root: str | os.PathLike[str], work_dir: str | os.PathLike[str], **options: object
) -> Manifest:
    """The manifest of a dataset of ``kind`` at ``root``.

    ``work_dir`` receives files the loader derives (COCO's semantic masks). ``options`` are
    the loader's keyword arguments (e.g. ``label_source`` for VOC, ``csv`` for a folder).
    """
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset directory does not exist")
    if kind in KINDS:
        problems = unknown_options(kind, options)
        if problems:
            raise DatasetError("; ".join(problems))
    if kind == "demo":
        from wsss.data import voc

        return voc.build(root, has_background=True, name="demo", **options)
    if kind == "voc":
        from wsss.data import voc

        return voc.build(root, **options)
    if kind == "msrc":
        from wsss.data import voc

        return voc.build(root, has_background=False, name="msrc21", **options)
    if kind == "coco":
        from wsss.data import coco

        return coco.build(root, mask_dir=Path(work_dir) / "coco_masks", **options)
    if kind == "folder":
        from wsss.data import folder

        return folder.build(root, **options)
    raise DatasetError(f"unknown dataset kind '{kind}' (choose from {', '.join(KINDS)})")

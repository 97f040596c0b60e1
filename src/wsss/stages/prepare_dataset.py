"""Stage: read a dataset, check every file of the used splits, write the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.stage import Stage, arg

KINDS = ("demo", "voc", "msrc", "coco", "folder")


@dataclass(frozen=True, kw_only=True)
class IO:
    kind: str = arg(help="dataset layout", choices=KINDS)
    root: Path = arg(help="dataset directory")
    out: Path = arg(help="manifest (JSON) to write")
    splits: tuple[str, ...] = arg(help="splits to check and keep")
    options: str = arg("{}", 'loader options as a JSON object, e.g. {"label_source": "xml"}')
    check_pixels: bool = arg(True, "decode every image and mask (not only the headers)")


def run(io: IO, params: None = None) -> None:
    """Write the manifest of ``io.splits`` of the dataset at ``io.root`` to ``io.out``.

    Stops with a :class:`~wsss.data.manifest.DatasetError` naming the file at the first
    missing or corrupt image, mask of the wrong size, unknown label or empty split.
    """
    import json
    import logging
    import os

    from wsss.data import build_manifest
    from wsss.data.manifest import validate

    log = logging.getLogger(__name__)
    try:
        options = json.loads(io.options)
    except json.JSONDecodeError as err:
        raise ValueError(f"--options is not a JSON object: {err}") from err
    work_dir = os.path.dirname(os.path.abspath(io.out))
    manifest = build_manifest(io.kind, io.root, work_dir, **options)
    wanted = list(dict.fromkeys(io.splits))
    manifest.splits = {s: manifest.split(s) for s in wanted}
    validate(manifest, wanted, check_pixels=io.check_pixels)
    manifest.save(io.out)
    for split in wanted:
        log.info("split %s: %d images", split, len(manifest.splits[split]))
    log.info(
        "%d classes%s; wrote %s",
        len(manifest.classes),
        " + background" if manifest.has_background else "",
        io.out,
    )


STAGE = Stage("prepare", "check a dataset and write its manifest (JSON)", IO, None, run)

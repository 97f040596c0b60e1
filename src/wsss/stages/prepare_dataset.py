"""Stage: read a dataset, check every file of the used splits, write the manifest."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from wsss.data import build_manifest
from wsss.data.manifest import validate

log = logging.getLogger(__name__)


def run(
    kind: str,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    splits: Sequence[str],
    options: dict,
    check_pixels: bool = True,
) -> None:
    """Write the manifest of ``splits`` of the dataset at ``root`` to ``out``.

    Stops with a :class:`~wsss.data.manifest.DatasetError` naming the file at the first
    missing or corrupt image, mask of the wrong size, unknown label or empty split.
    """
    work_dir = os.path.dirname(os.path.abspath(out))
    manifest = build_manifest(kind, root, work_dir, **options)
    wanted = list(dict.fromkeys(splits))
    manifest.splits = {s: manifest.split(s) for s in wanted}
    validate(manifest, wanted, check_pixels=check_pixels)
    manifest.save(out)
    for split in wanted:
        log.info("split %s: %d images", split, len(manifest.splits[split]))
    log.info(
        "%d classes%s; wrote %s",
        len(manifest.classes),
        " + background" if manifest.has_background else "",
        out,
    )

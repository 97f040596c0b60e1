"""Stage: a picture of a few images through the pipeline, one row per image.

Columns: image, ground truth, then whatever the run has made of it so far (CAMs, and the
label maps of later stages), each as given on the command line."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from wsss.atomic import save_png
from wsss.data.manifest import Manifest, read_image, read_mask
from wsss.store import MapsReader
from wsss.visualize import cam_overlay, colorize, panel

log = logging.getLogger(__name__)


def run(manifest_path: str | os.PathLike[str], split: str, out: str | os.PathLike[str],
        cams: Sequence[str | os.PathLike[str]] = (),
        label_dirs: Sequence[tuple[str, str | os.PathLike[str]]] = (),
        count: int = 4, ids: Sequence[str] = ()) -> None:  # fmt: skip
    """Write a panel PNG of ``count`` images of ``split`` (or the given ``ids``).

    ``cams``: maps shard files (shown as a heat map over the image); ``label_dirs``:
    (title, directory of ``<id>.png`` label maps) pairs, e.g. pseudo-masks.
    """
    manifest = Manifest.load(manifest_path)
    records = {r.id: r for r in manifest.split(split)}
    chosen = list(ids) or [i for i in sorted(records) if records[i].mask][:count]
    titles = ["image", "ground truth"] + (["CAM"] if cams else []) + [t for t, _ in label_dirs]
    rows = []
    reader = MapsReader(cams) if cams else None
    for image_id in chosen:
        rec = records[image_id]
        image = read_image(rec.image)
        row = [image, colorize(read_mask(rec.mask)) if rec.mask else image * 0]
        if reader is not None:
            row.append(cam_overlay(image, reader[image_id].maps))
        for _, directory in label_dirs:
            row.append(colorize(read_mask(Path(directory) / f"{image_id}.png")))
        rows.append(row)
    if reader is not None:
        reader.close()
    save_png(out, panel(rows, titles))
    log.info("wrote %s (%d images)", out, len(rows))

"""Stage: a picture of a few images through the pipeline, one row per image.

Columns: the image, then whatever the run has made of it that is given (CAMs, label maps of
later stages, a segmentation network's prediction), then the ground truth."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from wsss.atomic import save_png
from wsss.data.datasets import to_tensor
from wsss.data.manifest import Manifest, read_image, read_mask
from wsss.models.deeplab import load_seg_model
from wsss.stages.eval_labels import find_labels
from wsss.stages.infer_seg import segment
from wsss.store import MapsReader
from wsss.visualize import cam_overlay, colorize, panel

log = logging.getLogger(__name__)


def run(
    manifest_path: str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str],
    cams: Sequence[str | os.PathLike[str]] = (),
    label_dirs: Sequence[tuple[str, str | os.PathLike[str]]] = (),
    count: int = 4,
    ids: Sequence[str] = (),
    model: str | os.PathLike[str] | None = None,
) -> None:
    """Write a panel PNG of ``count`` images of ``split`` (or the given ``ids``).

    ``cams``: maps shard files (shown as a heat map over the image); ``label_dirs``:
    (title, directory of ``<id>.png`` label maps) pairs, e.g. pseudo-masks (a title given
    for several directories, e.g. shards, is one column); ``model``: a segmentation model
    file whose prediction (single scale with flip) is shown.
    """
    manifest = Manifest.load(manifest_path)
    records = {r.id: r for r in manifest.split(split)}
    chosen = list(ids) or [i for i in sorted(records) if records[i].mask][:count]
    grouped: dict[str, list] = {}
    for title, directory in label_dirs:  # one title may name several shard directories
        grouped.setdefault(title, []).append(directory)
    labels = {title: find_labels(dirs) for title, dirs in grouped.items()}
    titles = ["image", *(["CAM"] if cams else []), *labels]
    titles += [*(["prediction"] if model else []), "ground truth"]
    segmenter = load_seg_model(model)[0] if model else None
    rows = []
    reader = MapsReader(cams) if cams else None
    for image_id in chosen:
        rec = records[image_id]
        image = read_image(rec.image)
        row = [image]
        if reader is not None:
            row.append(cam_overlay(image, reader[image_id].maps))
        for found in labels.values():
            row.append(colorize(read_mask(found[image_id])))
        if segmenter is not None:
            probs = segment(segmenter, [to_tensor(image)], (1.0,), flip=True)[0]
            row.append(colorize(probs.argmax(0).numpy().astype("uint8")))
        row.append(colorize(read_mask(rec.mask)) if rec.mask else image * 0)
        rows.append(row)
    if reader is not None:
        reader.close()
    save_png(out, panel(rows, titles))
    log.info("wrote %s (%d images)", out, len(rows))

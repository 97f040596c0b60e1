"""Stage: a picture of a few images through the pipeline, one row per image.

Columns: the image, then whatever the run has made of it that is given (CAMs, label maps of
later stages, a segmentation network's prediction), then the ground truth. With
``--gallery``, every picture of the panel is also a file of its own, one folder per column
(the report shows each folder as a gallery)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import MANIFEST_HELP
from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    manifest: Path = arg(help=MANIFEST_HELP)
    split: str = arg("train", "split the images come from")
    out: Path = arg(help="panel PNG to write")
    gallery: Path | None = arg(
        None, "also write each picture of the panel to <gallery>/<N>-<column>/<id>.png"
    )
    maps: tuple[Path, ...] = arg((), "CAM shard files (shown as a heat map)")
    cams: tuple[str, ...] = arg(
        (), "TITLE=FILE: CAM shard files with a column title, e.g. two experiments' CAMs"
    )
    labels: tuple[str, ...] = arg(
        (), "TITLE=DIR: directories of <id>.png label maps with a column title"
    )
    model: Path | None = arg(None, "segmentation or WS-FCN model file: add its prediction")
    count: int = arg(4, "images shown (the first with masks)")
    ids: tuple[str, ...] = arg((), "these images instead")


def run(io: IO, params: None = None) -> None:
    """Write a panel PNG of ``io.count`` images of ``io.split`` (or the given ``io.ids``).

    A title given for several directories (shards) is one column; the prediction is
    single scale with flip.
    """
    import logging

    from PIL import Image

    from wsss.core.atomic import atomic_dir, save_png
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import Manifest, read_image, read_mask
    from wsss.data.store import MapsReader
    from wsss.jobs import find_labels
    from wsss.methods.inference import segment
    from wsss.models.registry import load_model
    from wsss.reporting.visualize import cam_overlay, colorize, panel

    manifest = Manifest.load(io.manifest)
    records = {r.id: r for r in manifest.split(io.split)}
    chosen = list(io.ids) or [i for i in sorted(records) if records[i].mask][: io.count]
    labels = {title: find_labels(dirs) for title, dirs in _titled(io.labels, "labels").items()}
    cams = [("CAM", list(io.maps))] if io.maps else []
    cams += list(_titled(io.cams, "cams").items())
    titles = ["image", *(title for title, _ in cams), *labels]
    titles += [*(["prediction"] if io.model else []), "ground truth"]
    segmenter = load_model(io.model, ("seg", "wsfcn")).model if io.model else None
    rows = []
    readers = [MapsReader(files) for _, files in cams]
    for image_id in chosen:
        rec = records[image_id]
        image = read_image(rec.image)
        row = [image]
        for reader in readers:
            row.append(cam_overlay(image, reader[image_id].maps))
        for found in labels.values():
            row.append(colorize(read_mask(found[image_id])))
        if segmenter is not None:
            probs = segment(segmenter, [to_tensor(image)], (1.0,), flip=True)[0]
            row.append(colorize(probs.argmax(0).numpy().astype("uint8")))
        row.append(colorize(read_mask(rec.mask)) if rec.mask else image * 0)
        rows.append(row)
    for reader in readers:
        reader.close()
    save_png(io.out, panel(rows, titles))
    logging.getLogger(__name__).info("wrote %s (%d images)", io.out, len(rows))
    if io.gallery is not None:
        with atomic_dir(io.gallery) as tmp:
            for column, title in enumerate(titles, 1):
                folder = tmp / f"{column}-{title.lower().replace(' ', '-')}"
                folder.mkdir()
                for image_id, row in zip(chosen, rows):
                    save_png(folder / f"{image_id}.png", Image.fromarray(row[column - 1]))
        logging.getLogger(__name__).info("wrote %s (%d columns)", io.gallery, len(titles))


def _titled(items: tuple[str, ...], option: str) -> dict[str, list[str]]:
    """``TITLE=PATH`` items grouped by title (a title given for several shards is one
    column), in order of first appearance."""
    grouped: dict[str, list[str]] = {}
    for item in items:
        title, sep, path = item.partition("=")
        if not sep or not title:
            raise ValueError(f"--{option} takes TITLE=PATH, not '{item}'")
        grouped.setdefault(title, []).append(path)
    return grouped


STAGE = Stage("figure", "a panel PNG: image, CAM, label maps, prediction, truth", IO, None, run)

"""``wsss predict``: segment a folder of new images with a trained network.

For every readable image ``DIR/name.ext`` it writes ``OUT/name.png`` (palette label map)
and ``OUT/name_overlay.jpg`` (the labels blended over the image). Unreadable files are
skipped, listed at the end and in ``OUT/skipped.txt``. The output folder must differ from
the input folder, so an input is never overwritten.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.atomic import atomic_path, save_png
from wsss.data.datasets import to_tensor
from wsss.data.manifest import DatasetError, read_image
from wsss.data.palette import label_image
from wsss.models.deeplab import SegNet, load_seg_model
from wsss.stages.infer_seg import InferSegParams, labels_from_probs, segment
from wsss.training import pick_device, progress
from wsss.visualize import colorize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictParams(InferSegParams):
    """The inference settings of :class:`InferSegParams` (the split is not used)."""


def run(
    checkpoint: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    params: PredictParams,
) -> list[Path]:
    """Segment every file of ``images_dir``; returns the files that could not be read."""
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: no such directory")
    if out_dir.resolve() == images_dir.resolve():
        raise ValueError(f"{out_dir}: the output folder must differ from the input folder")
    files = sorted(p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    model, label_names = load_seg_model(checkpoint, pick_device(params.device))
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[Path] = []
    readable: list[tuple[Path, np.ndarray]] = []
    for path in progress(files, "predict", "img"):
        try:
            readable.append((path, read_image(path)))
        except DatasetError as err:
            log.warning("skipping %s", err)
            skipped.append(path)
        if len(readable) == params.batch_size:
            _write(model, readable, out_dir, params)
            readable = []
    if readable:
        _write(model, readable, out_dir, params)
    with atomic_path(out_dir / "skipped.txt") as tmp:
        tmp.write_text("".join(f"{p}\n" for p in skipped))
    log.info(
        "segmented %d images into %s (labels: %s); skipped %d unreadable files%s",
        len(files) - len(skipped),
        out_dir,
        ", ".join(label_names),
        len(skipped),
        "".join(f"\n  {p}" for p in skipped),
    )
    return skipped


def _write(
    model: SegNet, batch: list[tuple[Path, np.ndarray]], out_dir: Path, params: PredictParams
) -> None:
    probs = segment(
        model, [to_tensor(im) for _, im in batch], params.scales, params.flip, params.amp
    )
    for (path, image), p in zip(batch, probs):
        labels = labels_from_probs(image, p, params)
        save_png(out_dir / f"{path.stem}.png", label_image(labels))
        overlay = (0.5 * image + 0.5 * colorize(labels)).astype(np.uint8)
        with atomic_path(out_dir / f"{path.stem}_overlay.jpg") as tmp:
            Image.fromarray(overlay).save(tmp, format="JPEG", quality=90)

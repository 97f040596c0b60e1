"""``wsss predict``: segment a folder of new images with a trained network.

For every readable image ``DIR/name.ext`` it writes ``OUT/name.png`` (palette label map)
and ``OUT/name_overlay.jpg`` (the labels blended over the image); files that share a name
but not an extension (``ok.jpg``, ``ok.png``) are written as ``OUT/ok_jpg.png``,
``OUT/ok_png.png``, so no result overwrites another. Unreadable files and dangling links
are skipped, listed at the end and in ``OUT/skipped.txt``; a folder without any file is
an error. The output folder must differ from the input folder, so an input is never
overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsss.settings import DEVICE_HELP, SegmentParams
from wsss.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    model: Path = arg(help="segmentation model file (train-seg)")
    images: Path = arg(help="folder of images")
    out: Path = arg(help="output folder (not the input folder)")
    device: str = arg("auto", DEVICE_HELP)


def run(io: IO, params: SegmentParams) -> list[Path]:
    """Segment every file of ``io.images``; returns the files that could not be read."""
    import logging

    import numpy as np
    from PIL import Image

    from wsss.atomic import atomic_path, save_png
    from wsss.common import pick_device, progress
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import DatasetError, read_image
    from wsss.data.palette import label_image
    from wsss.inference import labels_from_probs, segment
    from wsss.models.registry import load_model
    from wsss.visualize import colorize

    log = logging.getLogger(__name__)
    images_dir, out_dir = Path(io.images), Path(io.out)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: no such directory")
    if out_dir.resolve() == images_dir.resolve():
        raise ValueError(f"{out_dir}: the output folder must differ from the input folder")
    loaded = load_model(io.model, "seg", pick_device(io.device))
    entries = sorted(p for p in images_dir.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() or (p.is_symlink() and not p.exists())]
    if not files:
        raise FileNotFoundError(f"{images_dir}: no image files in this folder")
    names = output_names(files)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write(batch: list[tuple[Path, np.ndarray]]) -> None:
        probs = segment(
            loaded.model,
            [to_tensor(im) for _, im in batch],
            params.scales,
            params.flip,
            params.amp,
            params.max_pixels,
            [str(path) for path, _ in batch],
        )
        for (path, image), p in zip(batch, probs):
            labels = labels_from_probs(image, p, params)
            save_png(out_dir / f"{names[path]}.png", label_image(labels))
            overlay = (0.5 * image + 0.5 * colorize(labels)).astype(np.uint8)
            with atomic_path(out_dir / f"{names[path]}_overlay.jpg") as tmp:
                Image.fromarray(overlay).save(tmp, format="JPEG", quality=90)

    skipped: list[Path] = []
    readable: list[tuple[Path, np.ndarray]] = []
    for path in progress(files, "predict", "img"):
        try:
            readable.append((path, read_image(path)))
        except DatasetError as err:
            log.warning("skipping %s", err)
            skipped.append(path)
        if len(readable) == params.batch_size:
            write(readable)
            readable = []
    if readable:
        write(readable)
    with atomic_path(out_dir / "skipped.txt") as tmp:
        tmp.write_text("".join(f"{p}\n" for p in skipped))
    log.info(
        "segmented %d images into %s (labels: %s); skipped %d unreadable files%s",
        len(files) - len(skipped),
        out_dir,
        ", ".join(loaded.label_names),
        len(skipped),
        "".join(f"\n  {p}" for p in skipped),
    )
    return skipped


def output_names(files: list[Path]) -> dict[Path, str]:
    """The base name of each input's outputs: its stem, or ``stem_ext`` where several
    inputs share the stem (so that no output overwrites another)."""
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    return {p: p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}" for p in files}


STAGE = Stage("predict", "segment a folder of new images", IO, SegmentParams, run)

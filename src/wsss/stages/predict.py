"""``wsss predict``: segment a folder of new images with a trained network.

For every readable image ``DIR/name.ext`` it writes ``OUT/name.png`` (palette label map)
and ``OUT/name_overlay.jpg`` (the labels blended over the image) with ``--format png``
(the default); ``--format coco`` writes instead one ``OUT/predictions.json`` for the
folder: COCO-style ``categories`` (ids and names from the model), ``images`` (with each
image's class scores: the mean probability of each label over the image) and
``annotations``, one per image and predicted label, its mask as COCO RLE (decode with
``pycocotools.mask.decode``); ``both`` writes both. Files that share a name
but not an extension (``ok.jpg``, ``ok.png``) are written as ``OUT/ok_jpg.png``,
``OUT/ok_png.png``, so no result overwrites another. Unreadable files and dangling links
are skipped, listed at the end and in ``OUT/skipped.txt``; a folder without any file is
an error.

Predict writes only into a new or empty folder or into a folder of its own, and never
replaces a file it did not write. Its own folder holds the marker ``OUT/.wsss-predict.json``
(written before the first result): the model file and its fingerprint, the format, every
file the run writes, and ``complete``, true once the last file is written. Into a folder of
its own a new run first deletes the files the marker lists (the results of the earlier
run: finished, interrupted, or of another model or format), and only those; other files
there are kept, and one that a result of the new run would replace is an error. A folder
with files but no marker (ground-truth masks, the input folder, results of something else)
is refused, with the folder named, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wsss.core.settings import DEVICE_HELP, SegmentParams
from wsss.core.stage import Stage, arg

FORMATS = ("png", "coco", "both")
MARKER = ".wsss-predict.json"  # what makes a folder predict's own (see the module's doc)


@dataclass(frozen=True, kw_only=True)
class IO:
    model: Path = arg(help="segmentation model file (train-seg or train-wsfcn)")
    images: Path = arg(help="folder of images")
    out: Path = arg(help="output folder (not the input folder)")
    device: str = arg("auto", DEVICE_HELP)


@dataclass(frozen=True, kw_only=True)
class Params(SegmentParams):
    """Segmentation settings and what to write."""

    format: str = arg(
        "png", "png: label map and overlay per image; coco: one RLE JSON; both", choices=FORMATS
    )


def run(io: IO, params: Params) -> list[Path]:
    """Segment every file of ``io.images``; returns the files that could not be read."""
    import logging

    import numpy as np
    from PIL import Image

    from wsss.core.atomic import atomic_path, save_png, write_json
    from wsss.core.runtime import amp_of, pick_device, progress
    from wsss.data.datasets import to_tensor
    from wsss.data.manifest import DatasetError, read_image
    from wsss.data.palette import label_image
    from wsss.data.store import require_finite
    from wsss.methods.inference import check_scales, labels_from_probs, segment
    from wsss.models.registry import load_model
    from wsss.reporting.visualize import colorize

    log = logging.getLogger(__name__)
    images_dir, out_dir = Path(io.images), Path(io.out)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: no such directory")
    if out_dir.resolve() == images_dir.resolve():
        raise ValueError(f"{out_dir}: the output folder must differ from the input folder")
    check_scales(params.scales)
    loaded = load_model(io.model, ("seg", "wsfcn"), pick_device(io.device))
    entries = sorted(p for p in images_dir.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() or (p.is_symlink() and not p.exists())]
    if not files:
        raise FileNotFoundError(f"{images_dir}: no image files in this folder")
    names = output_names(files)
    planned = planned_files(names.values(), params.format)
    marker = {
        "written_by": "wsss predict",
        "model": str(io.model),
        "model_fingerprint": loaded.fingerprint,
        "format": params.format,
        "images": str(images_dir),
    }
    claim_folder(out_dir, planned, marker)
    coco = CocoWriter(loaded.label_names) if params.format in ("coco", "both") else None

    def write(batch: list[tuple[Path, np.ndarray]]) -> None:
        probs = segment(
            loaded.model,
            [to_tensor(im) for _, im in batch],
            params.scales,
            params.flip,
            amp_of(params),
            params.max_pixels,
            [str(path) for path, _ in batch],
        )
        for (path, image), p in zip(batch, probs):
            require_finite(p.cpu().numpy(), f"{path}: the class probabilities")
            labels = labels_from_probs(image, p, params)
            if coco is not None:
                coco.add(path.name, labels, p.cpu().numpy())
            if params.format == "coco":
                continue
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
    if coco is not None:
        coco.write(out_dir / "predictions.json", str(io.model))
    with atomic_path(out_dir / "skipped.txt") as tmp:
        tmp.write_text("".join(f"{p}\n" for p in skipped))
    written = [name for name in planned if (out_dir / name).exists()]
    write_json(out_dir / MARKER, {**marker, "complete": True, "files": written})
    log.info(
        "segmented %d images into %s (labels: %s); skipped %d unreadable files%s",
        len(files) - len(skipped),
        out_dir,
        ", ".join(loaded.label_names),
        len(skipped),
        "".join(f"\n  {p}" for p in skipped),
    )
    return skipped


class CocoWriter:
    """Collects the predictions of a folder as COCO-style JSON with RLE masks."""

    def __init__(self, label_names: list[str]):
        self.label_names = list(label_names)
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, file_name: str, labels, probs) -> None:
        """labels: uint8 [H, W]; probs: float [L, H, W] of one image."""
        import numpy as np
        from pycocotools import mask as mask_utils

        image_id = len(self.images) + 1
        height, width = labels.shape
        scores = probs.reshape(len(self.label_names), -1).mean(1)
        self.images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": int(height),
                "width": int(width),
                "scores": {n: round(float(v), 6) for n, v in zip(self.label_names, scores)},
            }
        )
        for label in np.unique(labels).tolist():
            binary = np.asfortranarray(labels == label, dtype=np.uint8)
            rle = mask_utils.encode(binary)
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": {
                        "size": [int(height), int(width)],
                        "counts": rle["counts"].decode("ascii"),
                    },  # fmt: skip
                    "area": int(binary.sum()),
                    "score": round(float(probs[label][labels == label].mean()), 6),
                }
            )

    def write(self, path: Path, model: str) -> None:
        from wsss import __version__
        from wsss.core.atomic import write_json

        write_json(
            path,
            {
                "info": {"description": f"wsss {__version__} predictions", "model": model},
                "categories": [{"id": i, "name": n} for i, n in enumerate(self.label_names)],
                "images": self.images,
                "annotations": self.annotations,
            },
        )


def planned_files(bases: Iterable[str], fmt: str) -> list[str]:
    """The names of every file a run writes into its folder (besides the marker)."""
    names = ["skipped.txt"]
    if fmt in ("coco", "both"):
        names.append("predictions.json")
    if fmt in ("png", "both"):
        for base in bases:
            names += [f"{base}.png", f"{base}_overlay.jpg"]
    return sorted(names)


def claim_folder(out_dir: Path, planned: list[str], marker: dict) -> None:
    """Make ``out_dir`` ready for a run that writes ``planned``: create it, or take a
    folder of predict's own (its marker) after deleting the files the marker lists; refuse
    (ValueError naming the folder) a folder with files but no marker, a damaged marker, or
    a file not of predict's own where a result would go. The marker, listing what the
    earlier run wrote and ``planned``, is written (``complete``: false) before anything is
    deleted or written, so that an interruption leaves every file of predict's listed."""
    import json
    import logging

    from wsss.core.atomic import remove_stale, write_json

    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: not a folder")
    own: list[str] = []
    if MARKER in entries:
        try:
            previous = json.loads((out_dir / MARKER).read_text())
            own = [str(name) for name in previous["files"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{out_dir}: its {MARKER} cannot be read ({type(err).__name__}), so the files "
                "of an earlier run cannot be told from others; give an empty or new folder"
            ) from err
        if any("/" in name or name in ("", ".", "..", MARKER) for name in own):
            raise ValueError(f"{out_dir}: its {MARKER} lists names that are not its results")
    elif entries:
        more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        shown = ", ".join(entries[:3]) + more
        raise ValueError(
            f"{out_dir}: the output folder holds files that wsss predict did not write "
            f"({shown}); give an empty or new folder"
        )
    foreign = set(entries) - set(own) - {MARKER}
    in_the_way = [name for name in planned if name in foreign]
    if in_the_way:
        raise ValueError(
            f"{out_dir}: {in_the_way[0]} is in the way and was not written by wsss predict "
            f"({len(in_the_way)} such files); give an empty or new folder"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        out_dir / MARKER, {**marker, "complete": False, "files": sorted(set(own) | set(planned))}
    )
    removed = 0
    for name in own:
        path = out_dir / name
        remove_stale(path)
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed += 1
    if removed:
        logging.getLogger(__name__).info(
            "%s: deleted the %d files of the earlier run of wsss predict", out_dir, removed
        )


def output_names(files: list[Path]) -> dict[Path, str]:
    """The base name of each input's outputs: its stem, or ``stem_ext`` where several
    inputs share the stem (so that no output overwrites another)."""
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    return {p: p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.')}" for p in files}


STAGE = Stage("predict", "segment a folder of new images", IO, Params, run)

"""PASCAL VOC 2012 layout (also MSRC-21 converted to it) -> :class:`Manifest`.

Layout under ``root``::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png       palette PNG label maps (optional per id)
    SegmentationClassAug/<id>.png    SBD label maps, palette or greyscale (optional)
    Annotations/<id>.xml             VOC XML with <object><name> entries (optional)
    ImageSets/Segmentation/<split>.txt
    classes.txt                      foreground class names, one a line (optional)

Every ``*.txt`` under ``ImageSets/Segmentation`` is a split named after the file. A line
holds an id; blank lines are skipped. DeepLab-style lines (``/JPEGImages/<id>.jpg
/SegmentationClassAug/<id>.png``) are read as the id of their first path.

An id's mask is ``SegmentationClass/<id>.png`` if present, else
``SegmentationClassAug/<id>.png`` if present, else none.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

from wsss.data.manifest import (
    DatasetError,
    Manifest,
    Record,
    class_index,
    labels_from_mask,
    read_mask,
)

VOC_CLASSES = tuple(
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike "
    "person pottedplant sheep sofa train tvmonitor".split()
)

LABEL_SOURCES = ("masks", "xml")


def build(
    root: str | os.PathLike[str],
    has_background: bool = True,
    label_source: str = "masks",
    name: str = "voc",
) -> Manifest:
    """Read a VOC-layout dataset.

    ``label_source="masks"`` takes an id's labels from its mask, or from its XML when it has
    no mask; ``"xml"`` takes them from the XML for every id. Files are not opened beyond
    what the labels need: :func:`~wsss.data.manifest.validate` checks images and sizes.
    """
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got '{label_source}'")
    root = Path(root).absolute()
    class_file = root / "classes.txt"
    classes = read_classes(class_file) if class_file.is_file() else VOC_CLASSES
    cache: dict[str, Record] = {}
    splits = {}
    for split, ids in _read_splits(root / "ImageSets" / "Segmentation").items():
        records = []
        for image_id in ids:
            if image_id not in cache:
                cache[image_id] = _record(root, image_id, classes, has_background, label_source)
            records.append(cache[image_id])
        splits[split] = records
    return Manifest(name, classes, has_background, splits)


def read_classes(path: Path) -> tuple[str, ...]:
    """Class names from a text file, one a line (blank lines skipped)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read class list ({err})") from err
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise DatasetError(f"{path}: class list is empty")
    return names


def _read_splits(folder: Path) -> dict[str, list[str]]:
    """Split name -> ids, from every ``*.txt`` file in ``folder``."""
    files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"{folder}: no split files (*.txt) found")
    images = folder.parent.parent / "JPEGImages"
    return {path.stem: _read_ids(path, images) for path in files}


def _read_ids(path: Path, images: Path) -> list[str]:
    """The ids of a split file, one a line: ``id``, ``id flag`` (ImageSets/Main) or
    ``/JPEGImages/id.jpg /SegmentationClassAug/id.png`` (SBD lists). A line that names an
    image whole (``my photo`` with ``JPEGImages/my photo.jpg``) is that id, spaces kept.
    A UTF-8 byte-order mark is ignored; an id listed twice is an error naming both lines."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read split file ({err})") from err
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        whole = line.strip()
        if not whole:
            continue
        if (images / f"{whole}.jpg").is_file():
            image_id = whole
        else:
            token = whole.split()[0]
            image_id = PurePosixPath(token).stem if "/" in token else token
        if image_id in first_line:
            raise DatasetError(
                f"{path}: image id '{image_id}' is listed twice (lines {first_line[image_id]} "
                f"and {number}); each image may appear once in a split"
            )
        first_line[image_id] = number
        ids.append(image_id)
    return ids


def _record(
    root: Path, image_id: str, classes: tuple[str, ...], has_background: bool, label_source: str
) -> Record:
    mask = _find_mask(root, image_id)
    xml = root / "Annotations" / f"{image_id}.xml"
    if label_source == "masks" and mask is not None:
        labels = labels_from_mask(read_mask(mask), len(classes), has_background)
    elif xml.is_file():
        labels = xml_labels(xml, classes)
    else:
        looked = [xml] if label_source == "xml" else _mask_paths(root, image_id) + [xml]
        raise DatasetError(
            f"image id '{image_id}' has no labels: none of {[str(p) for p in looked]} exists"
        )
    image = root / "JPEGImages" / f"{image_id}.jpg"
    return Record(image_id, str(image), str(mask) if mask else None, labels)


def _mask_paths(root: Path, image_id: str) -> list[Path]:
    return [root / sub / f"{image_id}.png" for sub in ("SegmentationClass", "SegmentationClassAug")]


def _find_mask(root: Path, image_id: str) -> Path | None:
    return next((p for p in _mask_paths(root, image_id) if p.is_file()), None)


def xml_labels(path: Path, classes: tuple[str, ...]) -> tuple[int, ...]:
    """Sorted class indices of the ``<object><name>`` entries of a VOC XML file."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as err:
        raise DatasetError(f"{path}: cannot parse annotation XML ({err})") from err
    indices = set()
    for obj in tree.getroot().iter("object"):
        obj_name = (obj.findtext("name") or "").strip()
        if not obj_name:
            raise DatasetError(f"{path}: <object> without a <name>")
        indices.add(class_index(obj_name, classes, path))
    return tuple(sorted(indices))

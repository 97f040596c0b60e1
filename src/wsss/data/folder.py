"""A custom image folder with a CSV of image-level labels -> :class:`Manifest`.

Layout under ``root``::

    images/<file>            any image PIL can read
    masks/<stem>.png         label maps (optional per image)
    <csv>                    header row; columns image, labels and optionally split
    classes.txt              foreground class names, one a line (optional)

``labels`` is a ``;``-separated list of class names (may be empty); ``split`` defaults to
"train". The class list is the ``classes`` argument, else ``classes.txt``, else the sorted
names found in the CSV. Labels always come from the CSV, also for images with a mask.

Images may lie in subfolders of ``images/``: the CSV names them by their path under it
(``cats/001.jpg``, id ``cats/001``, mask ``masks/cats/001.png``). Image files under
``images/`` that the CSV does not list are not used; a warning names them.
"""

from __future__ import annotations

import csv as csv_module
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from wsss.data.manifest import DatasetError, Manifest, Record, class_index
from wsss.data.voc import read_classes

REQUIRED_COLUMNS = ("image", "labels")
DEFAULT_SPLIT = "train"
# Unlisted image files named in the warning (the count says how many there are).
SHOWN = 10

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Row:
    """One CSV data row; ``line`` is its 1-based line number in the file."""

    line: int
    image: str
    names: tuple[str, ...]
    split: str


def build(
    root: str | os.PathLike[str],
    csv: str = "labels.csv",
    has_background: bool = True,
    classes: list[str] | None = None,
    name: str = "folder",
) -> Manifest:
    """Read a folder dataset described by ``root/<csv>``."""
    root = Path(root).absolute()
    csv_path = root / csv
    rows = _read_rows(csv_path)
    class_names = _class_list(root, rows, classes, csv_path)
    splits: dict[str, list[Record]] = {}
    for row in rows:
        labels = sorted({class_index(n, class_names, f"{csv_path}:{row.line}") for n in row.names})
        splits.setdefault(row.split, []).append(_record(root, row, tuple(labels)))
    _warn_unlisted(root, rows, csv_path)
    return Manifest(name, class_names, has_background, splits)


def split_label_names(
    root: str | os.PathLike[str], split: str, csv: str = "labels.csv"
) -> list[tuple[str, ...]]:
    """The sorted label names of each image of ``split``, from the CSV alone (cheap: the
    workflow's config check reads them before the first job)."""
    rows = _read_rows(Path(root) / csv)
    return [tuple(sorted(set(row.names))) for row in rows if row.split == split]


def _warn_unlisted(root: Path, rows: list[_Row], csv_path: Path) -> None:
    """Warn about image files under ``images/`` (any depth) that the CSV does not list."""
    from PIL import Image

    folder = root / "images"
    if not folder.is_dir():
        return
    suffixes = {s.lower() for s in Image.registered_extensions()}
    listed = {str(PurePosixPath(row.image)) for row in rows}
    unlisted = sorted(
        relative
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and (relative := path.relative_to(folder).as_posix()) not in listed
    )
    if not unlisted:
        return
    nested = [p for p in unlisted if "/" in p]
    hint = (
        f"; {len(nested)} of them in subfolders: list those by their path under images/, "
        f"e.g. {nested[0]}"
        if nested
        else ""
    )
    shown = ", ".join(unlisted[:SHOWN]) + (", ..." if len(unlisted) > SHOWN else "")
    log.warning(
        "%s: %d image files under %s are not in this CSV and are not used: %s%s",
        csv_path,
        len(unlisted),
        folder,
        shown,
        hint,
    )


def _read_rows(path: Path) -> list[_Row]:
    """Parse the CSV; missing columns, empty image cells and duplicates are errors."""
    if not path.is_file():
        raise DatasetError(f"{path}: label CSV is missing")
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark before the header
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv_module.DictReader(f)
            _check_columns(reader.fieldnames, path)
            rows = [_parse_row(raw, reader.line_num, path) for raw in reader]
    except (OSError, UnicodeDecodeError, csv_module.Error) as err:
        raise DatasetError(f"{path}: cannot read label CSV ({err})") from err
    _check_duplicates(rows, path)
    return rows


def _check_columns(fieldnames: list[str] | None, path: Path) -> None:
    columns = [c.strip() for c in fieldnames or []]
    for column in REQUIRED_COLUMNS:
        if column not in columns:
            raise DatasetError(f"{path}: column '{column}' is missing (header: {columns})")


def _parse_row(raw: dict[str | None, Any], line: int, path: Path) -> _Row:
    cells = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
    if not cells["image"]:
        raise DatasetError(f"{path}:{line}: the image cell is empty")
    names = tuple(n.strip() for n in cells["labels"].split(";") if n.strip())
    return _Row(line, cells["image"], names, cells.get("split") or DEFAULT_SPLIT)


def _check_duplicates(rows: list[_Row], path: Path) -> None:
    seen: dict[str, int] = {}
    for row in rows:
        key = _image_id(row.image)
        if key in seen:
            raise DatasetError(
                f"{path}:{row.line}: image '{row.image}' repeats the image of line {seen[key]}"
            )
        seen[key] = row.line


def _class_list(
    root: Path, rows: list[_Row], classes: list[str] | None, csv_path: Path
) -> tuple[str, ...]:
    if classes is not None:
        return tuple(classes)
    if (root / "classes.txt").is_file():
        return read_classes(root / "classes.txt")
    names = tuple(sorted({n for row in rows for n in row.names}))
    if not names:
        raise DatasetError(f"{csv_path}: no class names (no labels and no classes.txt)")
    return names


def _image_id(image: str) -> str:
    """The id of an image file: its path under ``images/`` without the extension."""
    return str(PurePosixPath(image).with_suffix(""))


def _record(root: Path, row: _Row, labels: tuple[int, ...]) -> Record:
    image_id = _image_id(row.image)
    mask = root / "masks" / f"{image_id}.png"
    return Record(
        image_id, str(root / "images" / row.image), str(mask) if mask.is_file() else None, labels
    )

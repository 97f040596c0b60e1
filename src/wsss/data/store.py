"""HDF5 files of per-image class maps (CAMs, refined CAMs), written in shards.

Layout of one shard file (``cam/shard-K.h5``, ``rw/shard-K.h5``)::

    /                     attrs: format="wsss-maps", version=1, kind ("cam", "rw"),
                                 label_names (JSON list), has_background, shard, num_shards,
                                 stride, alphas (JSON list, may be empty),
                                 model (fingerprint of the model that wrote the maps),
                                 source (for "rw": the model fingerprint of the CAMs walked),
                                 num_images, complete=True (set last)
    /images/<id>/maps     float16 [K, h, w], gzip: one map per present class, in [0, 1]
    /images/<id>/classes  int16 [K]: 0-based foreground class index of each map
    /images/<id>/background  float16 [A, h, w] (only when ``alphas`` is not empty): the
                          background map for each alpha of ``alphas``
    /images/<id>          attrs: size = [H, W], the image size in pixels

``stride`` is the ratio of image to map resolution: CAMs are stored at the image
resolution (stride 1, h = H), refined maps on the feature grid (stride 8, h = ceil(H / 8));
:meth:`ImageMaps.at_image_size` upsamples. When no background is stored it is derived from
the foreground maps (``(1 - max_c M_c) ** alpha``) where the maps are used. Ids containing
'/' are stored with '%2F'. A shard is written under a temporary name and renamed when
complete, so a file with the final name is always whole.

Every dataset carries a Fletcher-32 checksum, so a file damaged after it was written is
found when read (:meth:`MapsReader.__getitem__`, :func:`verify`: the error names the file
and the image). Maps that are not finite are refused when added. A reader checks that its
shards agree (kind, labels, model) and, given them, that they are of the kind, labels and
model the reading stage expects. ``model`` and ``source`` are empty in files written
before they were added; a check that needs them is then skipped.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from wsss.core.atomic import temp_name

FORMAT = "wsss-maps"
VERSION = 1


class StoreError(ValueError):
    """A maps file that is missing, incomplete or inconsistent (the message names it)."""


def require_finite(values: np.ndarray, what: str) -> None:
    """Refuse (ValueError naming ``what``) values that hold a NaN or an infinity: a
    diverged or damaged network gives them, and every later step would carry them on."""
    values = np.asarray(values)
    if values.size and not np.isfinite(values).all():
        bad = int(values.size - np.isfinite(values).sum())
        raise StoreError(
            f"{what}: {bad} of {values.size} values are not finite (NaN or inf); the network "
            "that made them has diverged or is damaged (see the health.json beside its model "
            "file)"
        )


@dataclass(frozen=True)
class ImageMaps:
    """The maps of one image: ``maps`` float32 [K, h, w], ``classes`` int [K],
    ``background`` float32 [A, h, w] or None, ``size`` = image (H, W), ``stride`` = H / h."""

    id: str
    maps: np.ndarray
    classes: np.ndarray
    background: np.ndarray | None
    size: tuple[int, int]
    stride: int

    def at_image_size(self) -> ImageMaps:
        """The same maps bilinearly upsampled to the image size (stride 1)."""
        if self.stride == 1:
            return self
        return replace(
            self,
            maps=upsample(self.maps, self.size, self.stride),
            background=None
            if self.background is None
            else upsample(self.background, self.size, self.stride),
            stride=1,
        )


def upsample(maps: np.ndarray, size: tuple[int, int], stride: int) -> np.ndarray:
    """Maps [K, h, w] on a grid of ``stride`` -> [K, H, W] (bilinear, then cropped)."""
    import torch
    import torch.nn.functional as F

    if len(maps) == 0:
        return np.zeros((0, *size), np.float32)
    grid = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
    full = F.interpolate(grid, scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return full[:, : size[0], : size[1]].numpy()


def _key(image_id: str) -> str:
    return image_id.replace("/", "%2F")


# Bytes a MapsWriter keeps free on the disk so that it can always close its file.
SPACE_RESERVE = 1 << 20


class MapsWriter:
    """Write one shard: ``with MapsWriter(path, ...) as w: w.add(id, maps, classes)``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        kind: str,
        label_names: Sequence[str],
        has_background: bool,
        shard: int,
        num_shards: int,
        stride: int = 1,
        alphas: Sequence[float] = (),
        model: str = "",
        source: str = "",
    ):
        self.path = Path(path)
        self.tmp = temp_name(self.path)
        self.attrs = {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "label_names": json.dumps(list(label_names)),
            "has_background": has_background,
            "shard": shard,
            "num_shards": num_shards,
            "stride": stride,
            "alphas": json.dumps([float(a) for a in alphas]),
            "model": model,
            "source": source,
        }
        self.num_alphas = len(alphas)
        self.count = 0

    def __enter__(self) -> MapsWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w")
        self.file.attrs.update(self.attrs)
        self.images = self.file.create_group("images")
        return self

    def add(
        self,
        image_id: str,
        maps: np.ndarray,
        classes: Sequence[int],
        background: np.ndarray | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        """Store ``maps`` [K, h, w] (values in [0, 1]) of the classes ``classes`` [K], and
        ``background`` [A, h, w] (one per alpha); ``size`` is the image size (H, W),
        by default the maps' own size."""
        if maps.ndim != 3 or maps.shape[0] != len(classes):
            raise ValueError(f"maps of {image_id}: shape {maps.shape} for {len(classes)} classes")
        if (background is None) != (self.num_alphas == 0) or (
            background is not None and background.shape != (self.num_alphas, *maps.shape[1:])
        ):
            raise ValueError(f"background of {image_id} does not match the alphas of the file")
        require_finite(maps, f"{self.path}: maps of image '{image_id}'")
        if background is not None:
            require_finite(background, f"{self.path}: background of image '{image_id}'")
        self._check_space(maps.nbytes // 2 + (0 if background is None else background.nbytes // 2))
        group = self.images.create_group(_key(image_id))
        group.attrs["size"] = np.asarray(size or maps.shape[1:], dtype=np.int64)
        for name, data in (("maps", maps), ("background", background)):
            if data is not None:
                group.create_dataset(
                    name,
                    data=data.astype(np.float16),
                    compression="gzip",
                    compression_opts=4,
                    fletcher32=bool(len(data)),
                    chunks=(1, *data.shape[1:]) if len(data) else None,
                )
        group.create_dataset("classes", data=np.asarray(classes, dtype=np.int16), fletcher32=True)
        self.file.flush()
        self.count += 1

    def _check_space(self, nbytes: int) -> None:
        """Refuse (OSError, no space) to add ``nbytes`` of data unless the disk keeps
        :data:`SPACE_RESERVE` free besides: HDF5 does not report a full disk where it
        happens (it prints the error, carries on, and may crash when the file is closed),
        so the writer stops before the disk fills, with room left to close the file."""
        stat = os.statvfs(self.tmp.parent)
        free = stat.f_bavail * stat.f_frsize
        if free < nbytes + SPACE_RESERVE:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device: {free // 1024} KiB free, the next image needs "
                f"about {(nbytes + SPACE_RESERVE) // 1024} KiB with the reserve to close the file",
                str(self.path),
            )

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.file.attrs["num_images"] = self.count
                self.file.attrs["complete"] = True
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


# What every shard of one set of maps shares (compared across the shards a reader opens).
SHARED = ("kind", "label_names", "has_background", "stride", "alphas", "num_shards", "model")


def _attr(f: h5py.File, name: str) -> object:
    value = f.attrs.get(name, "")
    return value.item() if isinstance(value, np.generic) else value


class MapsReader:
    """Read the maps of many shards as one mapping id -> :class:`ImageMaps`.

    The shards must agree on what :data:`SHARED` names (one set of maps of one model).
    ``kind`` (a kind or kinds), ``label_names`` and ``model`` (a model fingerprint), when
    given, are what the reading stage expects; a shard of another kind, of other labels or
    written by another model (where the shard records its model) is refused.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        kind: str | Sequence[str] | None = None,
        label_names: Sequence[str] | None = None,
        model: str = "",
    ):
        self.files: list[h5py.File] = []
        self.where: dict[str, h5py.File] = {}
        try:
            for path in paths:
                f = open_maps_file(path)
                self.files.append(f)
                self._check(f, kind, label_names, model)
                try:
                    keys = list(f["images"])
                except (KeyError, OSError, RuntimeError) as err:
                    raise StoreError(
                        f"{path}: damaged: its image index cannot be read ({err})"
                    ) from err
                for key in keys:
                    image_id = key.replace("%2F", "/")
                    if image_id in self.where:
                        raise StoreError(
                            f"{path}: image '{image_id}' is also in {self.where[image_id].filename}"
                        )
                    self.where[image_id] = f
        except BaseException:
            self.close()
            raise
        first = self.files[0].attrs if self.files else {}
        self.kind = str(first.get("kind", ""))
        self.label_names: list[str] = json.loads(first["label_names"]) if self.files else []
        self.has_background = bool(first.get("has_background", False))
        self.stride = int(first.get("stride", 1))
        self.alphas: list[float] = json.loads(first.get("alphas", "[]")) if self.files else []
        self.model = str(first.get("model", ""))
        self.source = str(first.get("source", ""))

    def _check(
        self,
        f: h5py.File,
        kind: str | Sequence[str] | None,
        label_names: Sequence[str] | None,
        model: str,
    ) -> None:
        """Refuse a shard that does not match the first one, or what the stage expects."""
        if self.files[0] is not f:
            first = self.files[0]
            for name in SHARED:
                if _attr(f, name) != _attr(first, name):
                    raise StoreError(
                        f"{f.filename}: its {name} {_attr(f, name)!r} differs from "
                        f"{_attr(first, name)!r} in {first.filename}: the shards are not "
                        "of one set of maps"
                    )
        kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
        found = str(_attr(f, "kind"))
        if kinds and found not in kinds:
            raise StoreError(
                f"{f.filename}: a shard of '{found}' maps, but {' or '.join(map(repr, kinds))} "
                "maps are needed here"
            )
        labels = json.loads(_attr(f, "label_names") or "[]")
        if label_names is not None and labels != list(label_names):
            raise StoreError(
                f"{f.filename}: maps of the labels {labels}, but the manifest has "
                f"{list(label_names)}: they were made for another dataset"
            )
        written_by = str(_attr(f, "model"))
        if model and written_by and written_by != model:
            raise StoreError(
                f"{f.filename}: maps written by the model {written_by}, not by the model "
                f"given ({model})"
            )

    def ids(self) -> list[str]:
        return sorted(self.where)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.where

    def __getitem__(self, image_id: str) -> ImageMaps:
        if image_id not in self.where:
            raise StoreError(f"image '{image_id}' is in none of the maps files")
        f = self.where[image_id]
        try:
            group = f["images"][_key(image_id)]
            background = (
                group["background"][()].astype(np.float32) if "background" in group else None
            )
            maps = group["maps"][()].astype(np.float32)
            classes = group["classes"][()]
            size = tuple(int(v) for v in group.attrs["size"])
        except (KeyError, OSError, RuntimeError, ValueError, TypeError) as err:
            raise StoreError(
                f"{f.filename}: damaged: the maps of image '{image_id}' cannot be read "
                f"({' '.join(str(err).split())})"
            ) from err
        if maps.ndim != 3 or len(classes) != len(maps):
            raise StoreError(
                f"{f.filename}: damaged: image '{image_id}' has maps of shape {maps.shape} "
                f"for {len(classes)} classes"
            )
        return ImageMaps(image_id, maps, classes, background, size, self.stride)

    def check_covers(self, ids: Sequence[str]) -> None:
        """Every id in ``ids`` is stored exactly once (duplicates were refused on open)."""
        missing = [i for i in ids if i not in self.where]
        if missing:
            names = ", ".join(f.filename for f in self.files)
            raise StoreError(f"{len(missing)} images have no maps in {names}: {missing[:5]}")

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> MapsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[ImageMaps]:
        for image_id in self.ids():
            yield self[image_id]


def verify(path: str | os.PathLike[str]) -> int:
    """Read every image of a shard (checksums, shapes, finite values); returns the number
    of images, or raises :class:`StoreError` naming the file and the first damaged image."""
    with MapsReader([path]) as reader:
        for image_id in reader.ids():
            item = reader[image_id]
            require_finite(item.maps, f"{path}: maps of image '{image_id}'")
            if item.background is not None:
                require_finite(item.background, f"{path}: background of image '{image_id}'")
        expected = reader.files[0].attrs.get("num_images")
        if expected is not None and int(expected) != len(reader.ids()):
            raise StoreError(
                f"{path}: damaged: {len(reader.ids())} images stored, {int(expected)} written"
            )
        return len(reader.ids())


def open_maps_file(path: str | os.PathLike[str]) -> h5py.File:
    """Open a shard read-only, refusing a missing, foreign, incomplete or damaged file."""
    if not os.path.isfile(path):
        raise StoreError(f"{path}: maps file is missing")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        reason = " ".join(str(err).split())
        what = "damaged (cut short)" if "truncated file" in reason else "not a readable HDF5 file"
        raise StoreError(f"{path}: {what} ({reason})") from err
    if f.attrs.get("format") != FORMAT or not f.attrs.get("complete", False):
        f.close()
        raise StoreError(f"{path}: not a complete {FORMAT} file")
    return f

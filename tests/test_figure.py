"""The example panel (`wsss figure`): CAMs of several experiments side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.manifest import Manifest
from wsss.data.store import MapsWriter
from wsss.stages.figure import IO, run


def cams(path: Path, manifest: Manifest, top: bool) -> Path:
    """One shard whose every map is 1 on the top (or bottom) half of the image, else 0."""
    with MapsWriter(path, "cam", manifest.label_names, True, 0, 1) as writer:
        for rec in manifest.split("train"):
            height, width = rec.size
            maps = np.zeros((1, height, width), np.float32)
            if top:
                maps[0, : height // 2] = 1.0
            else:
                maps[0, height // 2 :] = 1.0
            writer.add(rec.id, maps, [0])
    return path


def test_cams_of_two_experiments_are_two_columns(tiny_manifest: Path, tmp_path: Path) -> None:
    manifest = Manifest.load(tiny_manifest)
    top = cams(tmp_path / "top.h5", manifest, top=True)
    bottom = cams(tmp_path / "bottom.h5", manifest, top=False)
    gallery = tmp_path / "gallery"
    io = IO(
        manifest=tiny_manifest,
        out=tmp_path / "panel.png",
        gallery=gallery,
        cams=(f"plain CAM={top}", f"patches CAM={bottom}"),
        count=3,
    )
    run(io)
    columns = sorted(p.name for p in gallery.iterdir())
    assert columns == ["1-image", "2-plain-cam", "3-patches-cam", "4-ground-truth"]
    shown = sorted(p.name for p in (gallery / "1-image").iterdir())
    assert len(shown) == 3
    for name in shown:
        warmth = {}  # red minus blue: the heat of 1 is yellow, of 0 dark blue
        for column in ("2-plain-cam", "3-patches-cam"):
            picture = np.asarray(Image.open(gallery / column / name), np.float32)
            warmth[column] = picture[..., 0] - picture[..., 2]
        # the same image under both: the difference is the heat of each file's own maps
        diff = warmth["2-plain-cam"] - warmth["3-patches-cam"]
        half = diff.shape[0] // 2
        assert diff[:half].min() > 100 and diff[half:].max() < -100, name
    assert Image.open(tmp_path / "panel.png").width > 4 * 64


def test_a_cams_item_without_a_title_is_named(tiny_manifest: Path, tmp_path: Path) -> None:
    io = IO(manifest=tiny_manifest, out=tmp_path / "panel.png", cams=("cam/shard-0.h5",))
    with pytest.raises(ValueError, match=r"--cams takes TITLE=PATH, not 'cam/shard-0.h5'"):
        run(io)
    assert not (tmp_path / "panel.png").exists()

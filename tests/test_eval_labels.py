"""`eval-labels`: scores of label-map PNGs, neutral pixels, and broken inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss.data.manifest import DatasetError, Manifest, read_mask
from wsss.data.palette import write_label_png
from wsss.stages import eval_labels


def score(manifest: Path, labels: list[Path], out: Path, stage: str, split: str) -> dict:
    io = eval_labels.IO(manifest=manifest, labels=tuple(labels), out=out, stage=stage, split=split)
    return eval_labels.run(io)


def copy_masks(manifest: Manifest, directory: Path) -> None:
    for rec in manifest.split("val"):
        write_label_png(directory, rec.id, read_mask(rec.mask))


def test_perfect_and_neutral_label_maps(tiny_manifest: Path, tmp_path: Path) -> None:
    manifest = Manifest.load(tiny_manifest)
    copy_masks(manifest, tmp_path / "a")
    result = score(tiny_manifest, [tmp_path / "a"], tmp_path / "m.json", "x", "val")
    assert result["miou"] == 100.0 and result["coverage"] == 100.0
    first = manifest.split("val")[0]
    half = read_mask(first.mask).copy()
    half[:, :32] = 255  # left half neutral: not scored, coverage drops
    write_label_png(tmp_path / "a", first.id, half)
    result = score(tiny_manifest, [tmp_path / "a"], tmp_path / "m.json", "x", "val")
    assert result["miou"] == 100.0
    assert result["coverage"] == pytest.approx(100 * (1 - 0.5 / 8), abs=0.01)


def test_broken_label_maps_name_the_file(tiny_manifest: Path, tmp_path: Path) -> None:
    manifest = Manifest.load(tiny_manifest)
    copy_masks(manifest, tmp_path / "a")
    victim = manifest.split("val")[3]
    (tmp_path / "a" / f"{victim.id}.png").unlink()
    with pytest.raises(DatasetError, match=f"1 images of 'val' have no label map.*{victim.id}"):
        score(tiny_manifest, [tmp_path / "a"], tmp_path / "m.json", "x", "val")
    wrong = np.full((64, 64), 9, np.uint8)  # 6 classes + background: 9 is no label
    write_label_png(tmp_path / "a", victim.id, wrong)
    with pytest.raises(DatasetError, match=f"{victim.id}.png: values outside 0..6"):
        score(tiny_manifest, [tmp_path / "a"], tmp_path / "m.json", "x", "val")
    write_label_png(tmp_path / "a", victim.id, np.zeros((32, 64), np.uint8))
    with pytest.raises(DatasetError, match=f"{victim.id}.png: size"):
        score(tiny_manifest, [tmp_path / "a"], tmp_path / "m.json", "x", "val")
    write_label_png(tmp_path / "b", victim.id, read_mask(victim.mask))
    with pytest.raises(DatasetError, match="is also in"):
        score(tiny_manifest, [tmp_path / "a", tmp_path / "b"], tmp_path / "m.json", "x", "val")
    assert not (tmp_path / "m.json").exists()

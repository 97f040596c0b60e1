"""`wsss prepare`: a broken dataset stops with an error that names the file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data.manifest import Manifest


def prepare(root: Path, out: Path, kind: str = "demo") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "wsss.cli",
            "prepare",
            "--kind",
            kind,
            "--root",
            str(root),
            "--out",
            str(out),
            "--splits",
            "train",
            "val",
        ],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def demo_copy(tiny_demo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    shutil.copytree(tiny_demo, root)
    return root


def test_good_dataset_gives_manifest(demo_copy: Path, tmp_path: Path) -> None:
    proc = prepare(demo_copy, tmp_path / "dataset.json")
    assert proc.returncode == 0, proc.stderr
    manifest = Manifest.load(tmp_path / "dataset.json")
    assert len(manifest.split("train")) == 24 and len(manifest.split("val")) == 8
    assert manifest.has_background and manifest.num_labels == 7
    assert all(r.size == (64, 64) and r.labels for r in manifest.split("train"))


def break_missing_image(root: Path) -> Path:
    path = root / "JPEGImages" / "train_0003.jpg"
    path.unlink()
    return path


def break_corrupt_jpeg(root: Path) -> Path:
    path = root / "JPEGImages" / "val_0002.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    return path


def break_mask_size(root: Path) -> Path:
    path = root / "SegmentationClass" / "train_0005.png"
    img = Image.open(path)
    small = img.resize((32, 48), Image.NEAREST)
    small.putpalette(img.getpalette())
    small.save(path)
    return path


def break_mask_label(root: Path) -> Path:
    path = root / "SegmentationClass" / "train_0007.png"
    img = Image.open(path)
    values = np.array(img)
    values[0, 0] = 17  # the demo has 6 classes + background: 17 is no class
    out = Image.fromarray(values, "P")
    out.putpalette(img.getpalette())
    out.save(path)
    return path


def break_empty_split(root: Path) -> Path:
    path = root / "ImageSets" / "Segmentation" / "val.txt"
    path.write_text("\n")
    return path


@pytest.mark.parametrize(
    ("breaker", "words"),
    [
        (break_missing_image, "missing"),
        (break_corrupt_jpeg, "corrupt"),
        (break_mask_size, "differs from its image"),
        (break_mask_label, "not in the class list"),
        (break_empty_split, "is empty"),
    ],
)
def test_broken_dataset_names_the_file(demo_copy: Path, tmp_path: Path, breaker, words) -> None:
    broken = breaker(demo_copy)
    out = tmp_path / "dataset.json"
    proc = prepare(demo_copy, out)
    assert proc.returncode == 3
    named = broken.name if breaker is not break_empty_split else "split 'val'"
    assert named in proc.stderr and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and list(tmp_path.glob(".dataset.json.tmp-*")) == []


def test_unknown_label_in_folder_csv_names_the_csv(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "a.jpg")
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels.csv").write_text("image,labels\na.jpg,cat;zebra\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsss.cli",
            "prepare",
            "--kind",
            "folder",
            "--root",
            str(root),
            "--out",
            str(tmp_path / "d.json"),
            "--splits",
            "train",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3
    assert "labels.csv" in proc.stderr and "zebra" in proc.stderr

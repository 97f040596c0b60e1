"""Tests of the built-in synthetic dataset (wsss.data.demo)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data import demo

NUM_TRAIN, NUM_VAL, SIZE = 12, 6, 96


def _generate(root: Path, seed: int = 0) -> Path:
    demo.generate(root, seed=seed, num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("demo") / "demo")


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def _mask(root: Path, name: str) -> np.ndarray:
    with Image.open(root / "SegmentationClass" / f"{name}.png") as img:
        assert img.mode == "P"
        return np.asarray(img)


def test_layout(root: Path) -> None:
    assert _ids(root, "train") == [f"train_{i:04d}" for i in range(NUM_TRAIN)]
    assert _ids(root, "val") == [f"val_{i:04d}" for i in range(NUM_VAL)]
    assert (root / "classes.txt").read_text().split("\n")[:-1] == list(demo.CLASSES)
    assert len(demo.CLASSES) >= 5
    assert len(list((root / "JPEGImages").glob("*.jpg"))) == NUM_TRAIN + NUM_VAL
    assert len(list((root / "SegmentationClass").glob("*.png"))) == NUM_TRAIN + NUM_VAL
    with Image.open(root / "JPEGImages" / "val_0003.jpg") as img:
        assert img.size == (SIZE, SIZE) and img.mode == "RGB"


def test_masks(root: Path) -> None:
    counts: dict[str, Counter[int]] = {"train": Counter(), "val": Counter()}
    for split, counter in counts.items():
        for name in _ids(root, split):
            mask = _mask(root, name)
            assert mask.shape == (SIZE, SIZE)
            values = set(np.unique(mask).tolist())
            assert values <= set(range(len(demo.CLASSES) + 1))
            assert values - {0}, f"{name} has no object"
            counter.update(values - {0})
    for split, counter in counts.items():
        per_class = [counter[k + 1] for k in range(len(demo.CLASSES))]
        assert max(per_class) - min(per_class) <= 2, (split, per_class)


def test_deterministic_and_atomic(root: Path, tmp_path: Path) -> None:
    again = _generate(tmp_path / "again")
    other = _generate(tmp_path / "other", seed=1)
    names = ["JPEGImages/train_0000.jpg", "SegmentationClass/val_0005.png", "classes.txt"]
    for name in names:
        assert (again / name).read_bytes() == (root / name).read_bytes()
    assert (other / names[0]).read_bytes() != (root / names[0]).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]

    (again / "stale.txt").write_text("left from before")
    _generate(again, seed=1)
    assert not (again / "stale.txt").exists()
    assert (again / names[0]).read_bytes() == (other / names[0]).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]


def test_render_sample_poses_wsss() -> None:
    ratios, multi, mixed = [], 0, 0
    for seed in range(40):
        sample = demo.render_sample(np.random.default_rng(seed), SIZE)
        foreground = sample.mask > 0
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
        assert 1 <= len(sample.classes) <= 3
        assert set(np.unique(sample.mask[foreground]).tolist()) == {c + 1 for c in sample.classes}
        assert not (sample.marking & ~foreground).any()
        for cls in sample.classes:
            assert (sample.marking & (sample.mask == cls + 1)).any(), "marking hidden"
        ratios.append(sample.marking.sum() / foreground.sum())
        multi += len(sample.classes) >= 2
        mixed += len(set(sample.classes)) >= 2
    assert np.mean(ratios) < 0.1
    assert multi >= 12 and mixed > 0


def test_render_sample_given_classes() -> None:
    sample = demo.render_sample(np.random.default_rng(7), SIZE, [5, 0, 5])
    assert sorted(sample.classes) == [0, 5, 5]
    assert set(np.unique(sample.mask).tolist()) == {0, 1, 6}

"""Confusion matrix, IoU / precision / recall, and CAM -> label decoding."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.methods.metrics import background_score, confusion, maps_to_labels, scores, taken_by


def test_confusion_ignores_255_and_counts_pairs() -> None:
    gt = np.array([[0, 0, 1], [1, 255, 2]], np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], np.uint8)
    conf = confusion(pred, gt, 3)
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert conf.sum() == 5


def test_scores_exact_values() -> None:
    # class 0: tp 1, gt 2, pred 2 -> IoU 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: 0
    conf = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    s = scores(conf, ["bg", "a", "b"])
    assert s["per_class"] == {"bg": 33.33, "a": 66.67, "b": 0.0}
    assert s["miou"] == pytest.approx(100 / 3, abs=0.01)
    assert s["precision"]["a"] == pytest.approx(66.67)
    assert s["recall"]["a"] == 100.0
    assert s["precision"]["b"] is None  # never predicted
    assert s["pixel_accuracy"] == 60.0


def test_absent_class_is_left_out_of_the_mean() -> None:
    conf = np.array([[4, 0, 0], [0, 2, 0], [0, 0, 0]])
    s = scores(conf, ["bg", "a", "b"])
    assert s["per_class"]["b"] is None
    assert s["miou"] == 100.0


def test_background_alpha_and_threshold() -> None:
    maps = np.array([[[0.0, 0.5, 1.0]], [[0.2, 0.1, 0.0]]], np.float32)  # [2, 1, 3]
    np.testing.assert_allclose(background_score(maps, alpha=2)[0], [0.64, 0.25, 0.0])
    np.testing.assert_allclose(background_score(maps, threshold=0.15)[0], [0.15] * 3)
    with pytest.raises(ValueError):
        background_score(maps)


def test_maps_to_labels_with_and_without_background() -> None:
    maps = np.array([[[0.05, 0.6, 0.9]], [[0.1, 0.7, 0.2]]], np.float32)  # classes 3 and 5
    # with background: bg = (1 - max)^1 = [0.9, 0.3, 0.1] -> bg, class 5, class 3
    assert maps_to_labels(maps, [3, 5], True, alpha=1).tolist() == [[0, 6, 4]]
    # a flat threshold of 0.65 -> bg, class 5 (0.7), class 3 (0.9)
    assert maps_to_labels(maps, [3, 5], True, threshold=0.65).tolist() == [[0, 6, 4]]
    # without background: argmax over present classes only, values are class indices
    assert maps_to_labels(maps, [3, 5], False).tolist() == [[5, 5, 3]]
    # an image with no labels is all background
    assert maps_to_labels(np.zeros((0, 1, 2)), [], True, alpha=4).tolist() == [[0, 0]]


def test_taken_by_names_where_a_class_pixels_go() -> None:
    # rows: ground truth; car's 10 pixels: 5 car, 3 road, 2 building; road's own row ignored
    conf = np.array([[5, 3, 2], [1, 8, 0], [0, 0, 4]])
    names = ["car", "road", "building"]
    assert taken_by(conf, names, "car") == [("road", 30.0), ("building", 20.0)]
    assert taken_by(conf, names, "car", top=1) == [("road", 30.0)]
    assert taken_by(conf, names, "road") == [("car", 11.11)]
    assert taken_by(conf, names, "building") == []
    with pytest.raises(ValueError, match="'cat'"):
        taken_by(conf, names, "cat")

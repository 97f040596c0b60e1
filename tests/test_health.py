"""Training-health measurements (AP, label prior, CAM border ratio) and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsss.training.health import (
    Problem,
    average_precision,
    border_ratio,
    check_cams,
    check_history,
    classification_scores,
    prior_scores,
)

# the run that diverged silently: loss barely moved, held-out classification below the prior
DIVERGED = (0.61, 0.68, 0.66, 0.63, 0.59, 0.57)
RISING = (0.42, 0.35, 0.50, 0.61, 0.68)
HEALTHY = (0.24, 0.15, 0.11, 0.09, 0.08, 0.07)


def blob(size: int = 16, sigma: float = 3.0) -> np.ndarray:
    """A Gaussian bump in the middle of a [size, size] map."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    return np.exp(-(x**2 + y**2) / (2 * sigma**2))


def top_band(size: int = 16, peak: float = 10.0) -> np.ndarray:
    """Background 1 with the top two rows at ``peak``."""
    cam = np.ones((size, size))
    cam[:2] = peak
    return cam


def test_average_precision_with_ties_hand_computed() -> None:
    # ranks: 0.9 (+) | 0.8 (+), 0.8 (-) tied | 0.3 (-) | 0.1 (+); 3 positives
    # thresholds: 0.9 -> P 1/1, R 1/3; 0.8 -> P 2/3, R 2/3; 0.3 -> R unchanged; 0.1 -> P 3/5, R 1
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 0.7556 (ignoring the tie would give 0.8667)
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    positive = np.array([True, True, False, False, True])
    assert average_precision(scores, positive) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # reordering tied entries does not change it
    assert average_precision(scores[[0, 2, 1, 3, 4]], positive[[0, 2, 1, 3, 4]]) == pytest.approx(
        (1 + 2 / 3 + 3 / 5) / 3
    )
    # all tied: the fraction of positives
    assert average_precision(np.zeros(5), positive) == pytest.approx(3 / 5)


def test_classification_scores_hand_computed() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    # class 0 ranks 0.9 (+) 0.2 (+) -0.5 (-) -1 (-): AP 1; class 1 ranks 2 (+) 0.1 (-) -0.3 (+)
    # -2 (-): AP (1 + 2/3) / 2
    logits = np.array([[0.9, -2.0], [-0.5, 2.0], [0.2, -0.3], [-1.0, 0.1]])
    s = classification_scores(logits, targets)
    assert s["map"] == pytest.approx(100 * (1 + (1 + 2 / 3) / 2) / 2)
    # predicted sets {0}, {1}, {0}, {1}: images 0 and 1 exact
    assert s["accuracy"] == pytest.approx(50.0)
    # argmax 0, 1, 0, 1: hits for images 0, 1, 2; image 3 has no label
    assert s["top1"] == pytest.approx(75.0)
    # probabilities: 0.5 matches logits > 0; at 0.4 image 2 is predicted {0, 1} (sigmoid(-0.3))
    probs = 1 / (1 + np.exp(-logits))
    assert classification_scores(probs, targets, threshold=0.5)["accuracy"] == pytest.approx(50.0)
    assert classification_scores(probs, targets, threshold=0.4)["accuracy"] == pytest.approx(75.0)


def test_classification_scores_skips_classes_without_positives() -> None:
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    logits = np.array([[1.0, 5.0], [-1.0, 5.0], [2.0, 5.0]])
    assert classification_scores(logits, targets)["map"] == pytest.approx(100.0)


def test_prior_scores_small_known_arrays() -> None:
    train = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0]])  # frequencies .75 .5 0
    val = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [1, 0, 0]])
    s = prior_scores(train, val)
    # constant scores: AP = held-out prevalence: 3/4, 1/4, 1/4
    assert s["map"] == pytest.approx(100 * (3 / 4 + 1 / 4 + 1 / 4) / 3)
    # best constant set {0} (0.5 is not > 0.5): images 0 and 3
    assert s["accuracy"] == pytest.approx(50.0)
    # most frequent training class 0 is in images 0, 2, 3
    assert s["top1"] == pytest.approx(75.0)


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    targets = rng.random((n, 5)) < np.array([0.6, 0.3, 0.2, 0.1, 0.05])
    targets[~targets.any(1), 0] = True  # every image has a label
    return targets.astype(np.int64)


def test_perfect_classifier_beats_the_prior() -> None:
    rng = np.random.default_rng(0)
    train, val = _labels(rng, 300), _labels(rng, 200)
    prior = prior_scores(train, val)
    s = classification_scores(2.0 * val - 1.0, val)
    assert s == {"map": 100.0, "accuracy": 100.0, "top1": 100.0}
    assert prior["map"] < 50
    assert check_history(HEALTHY, [60.0, 90.0, s["map"]], prior["map"]) == []


def test_random_and_constant_classifiers_do_not_beat_the_prior() -> None:
    rng = np.random.default_rng(1)
    train, val = _labels(rng, 300), _labels(rng, 400)
    prior = prior_scores(train, val)["map"]
    constant = classification_scores(np.zeros(val.shape), val)["map"]
    assert constant == pytest.approx(prior)
    random = classification_scores(rng.normal(size=val.shape), val)["map"]
    assert abs(random - prior) < 5.0
    for score in (constant, random):
        problems = check_history(HEALTHY, [score], prior)
        assert [p.what for p in problems] == ["held-out mAP is no better than the trivial prior"]
        assert f"{prior:.1f} %" in problems[0].seen


def test_border_ratio_values() -> None:
    assert border_ratio(np.full((16, 16), 0.3)) == pytest.approx(1.0)
    assert border_ratio(np.zeros((2, 16, 16))) == 1.0
    # whole mean (2*16*10 + 14*16) / 256 = 2.125; top band mean 10
    assert border_ratio(top_band()) == pytest.approx(10 / 2.125)
    assert border_ratio(top_band()) > 3
    # a peak on any one side counts, also summed over class maps [K, h, w]
    left = np.stack([top_band().T, np.zeros((16, 16))])
    assert border_ratio(left) == pytest.approx(10 / 2.125)
    assert border_ratio(blob()) < 1
    # a wider band dilutes the one-row peak
    cam = np.ones((16, 16))
    cam[0] = 10
    assert border_ratio(cam, rows=1) > border_ratio(cam, rows=4)


def test_border_ratio_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        border_ratio(-np.ones((4, 4)))
    with pytest.raises(ValueError, match="rows"):
        border_ratio(np.ones((4, 4)), rows=5)


def test_non_finite_loss_names_the_epoch() -> None:
    problems = check_history([0.5, 0.4, math.nan, 0.3], None, None)
    assert len(problems) == 1
    assert problems[0].what == "training loss is not finite"
    assert "epoch(s) 3" in problems[0].seen
    assert "cam.train.lr" in problems[0].advice


def test_an_epoch_loss_ten_times_the_first_steps_has_exploded() -> None:
    # a CAM training at lr 50 that stayed finite: 27 times the untrained network's loss
    problems = check_history([12.47, 15.2, 18.37], None, None, start_loss=0.686)
    assert [p.what for p in problems] == ["training loss exploded"]
    assert "epoch(s) 1, 2, 3, above 10 (10 times the first step's loss 0.686)" in problems[0].seen
    # the ceiling is 10 times the first step's loss, at least 10: 9.9 is not above it ...
    assert check_history([9.9], None, None, start_loss=0.686) == []
    assert check_history([24.0], None, None, start_loss=2.5) == []
    # ... 10.1, or 25.1 after a first step of 2.5, is
    assert check_history([10.1], None, None, start_loss=0.686)[0].what == "training loss exploded"
    assert check_history([25.1], None, None, start_loss=2.5)[0].what == "training loss exploded"


def test_rising_loss_fires() -> None:
    problems = check_history(RISING, None, None, advice_prefix="aff.train")
    assert [p.what for p in problems] == ["training loss is rising"]
    # mean of the last three 0.5967 vs the best earlier trailing mean (0.42 + 0.35) / 2
    assert "0.597" in problems[0].seen and "0.385" in problems[0].seen
    text = str(problems[0])
    assert "aff.train.lr 0.001" in text and "aff.train.warmup_epochs" in text
    # with the training's learning rate known, a tenth of it (not a value it already has)
    tenth = str(check_history(RISING, None, None, advice_prefix="wsfcn.train", lr=0.001)[0])
    assert "wsfcn.train.lr 0.0001" in tenth


def test_falling_tail_does_not_fire_rise_but_prior_does() -> None:
    # the diverged run: its last three epochs fall, so no "rising" verdict ...
    assert check_history(DIVERGED, None, None) == []
    # ... but its held-out mAP below the prior is caught
    problems = check_history(DIVERGED, [30.0, 31.0, 29.0, 30.0, 31.0, 30.5], 33.0)
    assert [p.what for p in problems] == ["held-out mAP is no better than the trivial prior"]
    assert "30.5 % against 33.0 %" in problems[0].seen
    assert problems[0].seen.endswith("per epoch: 30.0, 31.0, 29.0, 30.0, 31.0, 30.5")


def test_rise_rule_edges() -> None:
    # last epoch a new minimum: not flagged even though the recent mean is high
    assert check_history([0.3, 0.9, 0.8, 0.29], None, None) == []
    # within 5 % of the earlier minimum: noise, not a rise
    assert check_history([0.5, 0.4, 0.41, 0.41, 0.41], None, None) == []
    # not more epochs than the window: no verdict yet
    assert check_history([0.1, 0.5, 0.9], None, None) == []


def test_noisy_falling_loss_is_not_a_rise() -> None:
    """Short epochs (a few steps) give noisy losses; a falling trend is not flagged."""
    noisy = [0.733, 0.636, 0.579, 0.539, 0.513, 0.461, 0.466, 0.432, 0.436, 0.399, 0.375]
    noisy += [0.376, 0.346, 0.323, 0.327, 0.281, 0.289, 0.282, 0.325, 0.28, 0.241, 0.311]
    noisy += [0.194, 0.204, 0.215, 0.274, 0.21, 0.191, 0.205, 0.188, 0.164, 0.138, 0.165]
    noisy += [0.165, 0.155, 0.141, 0.113, 0.111, 0.142, 0.121]
    assert check_history(noisy, None, None) == []


def test_healthy_run_has_no_problem() -> None:
    assert check_history(HEALTHY, [40.0, 55.0, 62.0, 66.0, 68.0, 69.0], 35.0) == []
    # margin: 39.9 is within 5 points of 35, 40.0 is not
    assert check_history(HEALTHY, [39.9], 35.0) != []
    assert check_history(HEALTHY, [40.0], 35.0) == []


def test_check_cams() -> None:
    rng = np.random.default_rng(2)
    peaked = [border_ratio(top_band(peak=p)) for p in rng.uniform(6, 20, size=8)]
    centred = [border_ratio(blob(sigma=s)) for s in rng.uniform(2, 4, size=8)]
    assert check_cams(centred) == []
    assert check_cams([]) == []
    problems = check_cams(peaked[:6] + centred[:2])
    assert [p.what for p in problems] == ["CAMs concentrated on the image border"]
    median = float(np.median(peaked[:6] + centred[:2]))
    assert f"median border ratio {median:.2f}" in problems[0].seen
    assert "75 % of them above the limit" in problems[0].seen


def test_problem_str_is_one_paragraph() -> None:
    p = Problem("loss is rising", "losses 1, 2", "lower the learning rate")
    assert str(p) == "loss is rising. Seen: losses 1, 2. Try: lower the learning rate."

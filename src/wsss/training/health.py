"""Training-health measurements and verdicts: is a network learning anything useful?

A network trained with too high a learning rate can diverge without any error: its loss
stalls, its held-out image classification is no better than the label frequencies alone,
and its CAMs light up along an image border instead of on the objects. The functions here
measure these signs (``classification_scores``, ``prior_scores``, ``border_ratio``) and turn
them into ``Problem`` verdicts (``check_history``, ``check_cams``) that say what was seen and
what to try. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Non-interpolated average precision (fraction in 0..1) of one class.

    ``scores`` [N], ``positive`` [N] boolean with at least one true value. Tied scores form one
    threshold: AP = sum over distinct thresholds (descending) of (recall gain) x precision,
    the definition of sklearn's ``average_precision_score``. With all scores tied the AP is
    the fraction of positives.
    """
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    hits = positive[order].astype(np.float64)
    # last index of each run of equal scores: the points where a threshold cuts the ranking
    cuts = np.r_[np.flatnonzero(np.diff(ranked) != 0), ranked.size - 1]
    tp = np.cumsum(hits)[cuts]
    precision = tp / (cuts + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_scores(
    scores: np.ndarray, targets: np.ndarray, threshold: float = 0.0
) -> dict[str, float]:
    """Multi-label image classification scores, all in percent.

    ``scores`` [N, C] logits or probabilities, ``targets`` [N, C] in {0, 1}. ``threshold``
    decides the predicted label set (score > threshold: 0.0 for logits, 0.5 for
    probabilities). Returns ``map``: mean AP over the classes with at least one positive;
    ``accuracy``: share of images whose predicted set equals the true set exactly; ``top1``:
    share of images whose highest-scoring class is one of their labels.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(targets) > 0
    if scores.shape != positive.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {positive.shape} must both be [N, C]")
    present = np.flatnonzero(positive.any(0))
    if present.size == 0:
        raise ValueError("no class has a positive image")
    ap = [average_precision(scores[:, c], positive[:, c]) for c in present]
    exact = ((scores > threshold) == positive).all(1)
    top = positive[np.arange(len(scores)), scores.argmax(1)]
    return {
        "map": 100.0 * float(np.mean(ap)),
        "accuracy": 100.0 * float(exact.mean()),
        "top1": 100.0 * float(top.mean()),
    }


def prior_scores(train_targets: np.ndarray, val_targets: np.ndarray) -> dict[str, float]:
    """What the training label frequencies alone score on the held-out split (percent).

    ``train_targets`` [N_train, C], ``val_targets`` [N_val, C] in {0, 1}. Every held-out
    image gets the training frequency of each class as its score, so ``map`` is the mean
    held-out prevalence of the classes present there (AP of a constant score), ``accuracy``
    that of the best constant label set (the classes with training frequency > 0.5) and
    ``top1`` the share of held-out images containing the most frequent training class.
    Same keys as ``classification_scores``, which a trained classifier should beat.
    """
    frequency = (np.asarray(train_targets) > 0).mean(0)
    val = np.asarray(val_targets)
    return classification_scores(np.broadcast_to(frequency, val.shape), val, threshold=0.5)


def border_ratio(cams: np.ndarray, rows: int = 2) -> float:
    """How much a CAM concentrates along one image side (1.0 for a uniform map).

    ``cams`` [K, h, w] (one map per class, summed here) or [h, w], non-negative. For each of
    the four sides, the mean over its outer ``rows`` rows (top, bottom) or columns (left,
    right), divided by the mean over the whole map; returns the largest of the four, so a
    peak along a single side counts. All-zero maps give 1.0.
    """
    cams = np.asarray(cams, dtype=np.float64)
    if cams.ndim == 3:
        cams = cams.sum(0)
    if cams.ndim != 2:
        raise ValueError(f"expected CAMs [K, h, w] or [h, w], got shape {cams.shape}")
    if not 1 <= rows <= min(cams.shape):
        raise ValueError(f"rows must be in 1..{min(cams.shape)}, got {rows}")
    if (cams < 0).any():
        raise ValueError("CAMs must be non-negative (apply a ReLU first)")
    whole = cams.mean()
    if whole == 0:
        return 1.0
    bands = (cams[:rows], cams[-rows:], cams[:, :rows], cams[:, -rows:])
    return float(max(band.mean() for band in bands) / whole)


@dataclass(frozen=True)
class Problem:
    """One training-health finding: what is wrong, the numbers seen, and what to try."""

    what: str
    seen: str
    advice: str

    def __str__(self) -> str:
        return f"{self.what}. Seen: {self.seen}. Try: {self.advice}."


# An epoch's mean loss above this many times the first step's (at least 1) has exploded: a
# training that learns lowers its loss, and one at a sane learning rate never multiplies it.
# Over 42 trainings of the demo, MSRC-21 and their ablations (CAM, AffinityNet,
# segmentation and WS-FCN networks) the highest epoch loss was 0.68 times that; a CAM
# training at lr 50 reached 27 times it without a non-finite loss (torch 2.7).
EXPLODED = 10.0


def weights_problem(names: Sequence[str], advice_prefix: str = "cam.train") -> list[Problem]:
    """A problem when a trained network has weights that are not finite (``names``: the
    tensors that hold a NaN or an infinity; empty: none)."""
    if not names:
        return []
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return [
        Problem(
            "the trained weights are not finite",
            f"NaN or inf in {shown}",
            _lower_lr(advice_prefix),
        )
    ]


def _lower_lr(prefix: str, lr: float | None = None) -> str:
    """The advice to lower the learning rate: a tenth of ``lr`` when it is known."""
    example = f"{lr / 10:g}" if lr else "0.001"
    return (
        f"lower the learning rate (e.g. {prefix}.lr {example}) or lengthen the warm-up "
        f"({prefix}.warmup_epochs)"
    )


def _series(values: Iterable[float], spec: str = ".3g") -> str:
    return ", ".join(format(v, spec) for v in values)


def check_history(
    losses: Sequence[float],
    held_out: Sequence[float] | None,
    prior: float | None,
    *,
    metric: str = "mAP",
    margin: float = 5.0,
    window: int = 3,
    advice_prefix: str = "cam.train",
    prior_name: str = "the label frequencies alone",
    start_loss: float | None = None,
    lr: float | None = None,
) -> list[Problem]:
    """Problems in a training run so far (empty list: healthy).

    ``losses``: mean training loss of each epoch. ``held_out``: the held-out ``metric`` of
    each epoch in percent, ``prior``: the same metric from the label frequencies alone
    (``prior_scores``); either may be None to skip that check. ``advice_prefix`` is the
    config section of the network concerned (e.g. ``"cam.train"``), named in the advice;
    ``lr`` its learning rate (the advice suggests a tenth of it).

    - a non-finite loss, naming the (1-based) epochs;
    - an exploded loss: an epoch's mean above :data:`EXPLODED` times ``start_loss`` (the
      loss of the first training step, the untrained network's; at least 1), where given;
    - a rising loss: with more than ``window`` epochs, the mean of the last ``window`` is
      more than 5 % above the best trailing ``window``-epoch mean (fewer epochs at the
      start) of the epochs before them, and the last epoch's loss is above the lowest of
      all earlier epochs (still high and not recovering; a run whose recent epochs fall to
      a new minimum is not flagged; the means keep the noise of short epochs out);
    - a final held-out score less than ``margin`` points above the prior.
    """
    problems = []
    losses = [float(v) for v in losses]
    bad = [i + 1 for i, v in enumerate(losses) if not np.isfinite(v)]
    if bad:
        problems.append(
            Problem(
                "training loss is not finite",
                f"loss {_series(losses[i - 1] for i in bad)} at epoch(s) "
                f"{', '.join(map(str, bad))}",
                _lower_lr(advice_prefix, lr),
            )
        )
    elif (
        start_loss is not None
        and np.isfinite(start_loss)
        and any(v > EXPLODED * max(abs(start_loss), 1.0) for v in losses)
    ):
        ceiling = EXPLODED * max(abs(start_loss), 1.0)
        high = [i + 1 for i, v in enumerate(losses) if v > ceiling]
        problems.append(
            Problem(
                "training loss exploded",
                f"loss {_series(losses[i - 1] for i in high)} at epoch(s) "
                f"{', '.join(map(str, high))}, above {ceiling:.3g} ({EXPLODED:g} times the "
                f"first step's loss {start_loss:.3g})",
                _lower_lr(advice_prefix, lr),
            )
        )
    elif len(losses) > window:
        # Trailing means over ``window`` epochs smooth the epoch-to-epoch noise of short
        # epochs; the last window is compared with the best trailing mean before it.
        trailing = [
            float(np.mean(losses[max(0, i - window + 1) : i + 1])) for i in range(len(losses))
        ]
        earlier_min = min(trailing[: len(losses) - window])
        recent = trailing[-1]
        if recent > 1.05 * earlier_min and losses[-1] > min(losses[:-1]):
            problems.append(
                Problem(
                    "training loss is rising",
                    f"epoch losses {_series(losses)}: mean of the last {window} is {recent:.3g}, "
                    f"{100 * (recent / earlier_min - 1):.0f} % above the best earlier "
                    f"{window}-epoch mean {earlier_min:.3g}",
                    _lower_lr(advice_prefix, lr),
                )
            )
    if held_out and prior is not None:
        final = float(held_out[-1])
        if not final >= prior + margin:
            problems.append(
                Problem(
                    f"held-out {metric} is no better than the trivial prior",
                    f"final held-out {metric} {final:.1f} % against {prior:.1f} % from "
                    f"{prior_name} (needs a margin of {margin:g} points); "
                    f"per epoch: {_series(held_out, '.1f')}",
                    f"{_lower_lr(advice_prefix, lr)}; if the loss is falling normally, check that "
                    "the image labels match the images",
                )
            )
    return problems


def check_cams(
    ratios: Sequence[float], limit: float = 2.0, *, advice_prefix: str = "cam.train"
) -> list[Problem]:
    """A problem when the CAMs of a sample of images sit on the image border.

    ``ratios``: ``border_ratio`` of each sampled image's CAMs. Flags a median above
    ``limit``; empty input gives no problem.
    """
    if len(ratios) == 0:
        return []
    values = np.asarray(ratios, dtype=np.float64)
    median = float(np.median(values))
    if median <= limit:
        return []
    share = 100.0 * float((values > limit).mean())
    return [
        Problem(
            "CAMs concentrated on the image border",
            f"median border ratio {median:.2f} (limit {limit:g}) over {values.size} images, "
            f"{share:.0f} % of them above the limit",
            f"{_lower_lr(advice_prefix)}; the network may be keying on padding or crop edges",
        )
    ]

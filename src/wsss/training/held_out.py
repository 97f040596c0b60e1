"""Training health: a score on held-out images after every epoch, against what a trivial
predictor scores (:class:`HeldOut`), for each network.

- CAM network (every image classifier, WS-FCN's classification branch too): mAP of the
  image labels of the held-out split, against the label frequencies of the training split
  alone (:func:`wsss.training.health.prior_scores`); at the end, where its CAMs (WS-FCN: its masks)
  sit (:func:`wsss.training.health.border_ratio`).
- AffinityNet: balanced accuracy of "same label" (affinity > 0.5) over the pairs of
  neighbouring grid cells of held-out images whose ground truth is known, against 50 %.
- Segmentation network: mIoU on held-out images, single scale, against the trivial floor
  (every pixel the split's most frequent label).

Held-out images are scored at a bounded size (long side ``size`` pixels), so large photos
cost no more than small ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.datasets import to_tensor
from wsss.data.manifest import IGNORE, Record, read_image, read_mask
from wsss.methods.metrics import confusion, scores
from wsss.training.health import (
    Problem,
    border_ratio,
    check_cams,
    classification_scores,
    prior_scores,
)

MAX_IMAGES = 64  # held-out images scored per epoch at most (the first, by id)


@dataclass
class HeldOut:
    """How a network's training health is measured.

    ``measure(model)`` (eval mode, no gradients) returns named scores in percent, among
    them ``metric``; ``prior`` is what a trivial predictor scores on ``metric``;
    ``final_checks(model)`` adds problems seen only in the trained network.
    """

    metric: str
    prior: float
    prior_name: str
    measure: Callable[[nn.Module], dict[str, float]]
    final_checks: Callable[[nn.Module], list[Problem]] = field(default=lambda model: [])


def sample(records: Sequence[Record], need_mask: bool = False) -> list[Record]:
    """The held-out records scored each epoch: the first ``MAX_IMAGES`` by id."""
    usable = [r for r in records if (r.mask if need_mask else r.labels)]
    return sorted(usable, key=lambda r: r.id)[:MAX_IMAGES]


def _bounded(records: Sequence[Record], size: int) -> dict[str, torch.Tensor]:
    """Each record's image as [1, 3, h, w] in [0, 255] with the long side at most ``size``
    pixels, read once (the checks run after every epoch)."""
    found = {}
    for rec in records:
        image = read_image(rec.image)
        tensor = to_tensor(image)[None]
        scale = min(1.0, size / max(image.shape[:2]))
        if scale < 1.0:
            shape = [max(1, round(s * scale)) for s in image.shape[:2]]
            tensor = F.interpolate(
                tensor, shape, mode="bilinear", align_corners=False, antialias=True
            )
        found[rec.id] = tensor
    return found


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def classifier(
    held_out: Sequence[Record],
    train: Sequence[Record],
    num_classes: int,
    size: int,
    border_limit: float = 2.0,
    advice_prefix: str = "cam.train",
    logits: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda model, x: model(x),
    maps: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda model, x: model.cams(x),
) -> HeldOut | None:
    """Held-out image classification of a classifier: ``logits(model, images)`` -> image
    logits [B, C] and ``maps(model, images)`` -> non-negative class maps [B, C, h, w] (a
    CAM network's by default); None without labelled held-out images."""
    records = sample(held_out)
    if not records:
        return None
    images = _bounded(records, size)

    def targets(recs: Sequence[Record]) -> np.ndarray:
        out = np.zeros((len(recs), num_classes))
        for i, rec in enumerate(recs):
            out[i, list(rec.labels)] = 1.0
        return out

    truth = targets(records)
    prior = prior_scores(targets(train), truth)["map"]

    def measure(model: nn.Module) -> dict[str, float]:
        predicted = np.stack(
            [
                logits(model, images[r.id].to(_device(model)))[0].float().cpu().numpy()
                for r in records
            ]
        )
        found = classification_scores(predicted, truth)
        return {f"val_{k}": round(v, 2) for k, v in found.items()}

    def border(model: nn.Module) -> list[Problem]:
        ratios = []
        for rec in records[:32]:
            cams = maps(model, images[rec.id].to(_device(model)))[0]
            present = cams[list(rec.labels)].float().cpu().numpy()
            if present.shape[-1] > 4 and present.shape[-2] > 4:
                ratios.append(border_ratio(present))
        return check_cams(ratios, border_limit, advice_prefix=advice_prefix)

    return HeldOut("val_map", round(prior, 2), "the label frequencies alone", measure, border)


def affinity(held_out: Sequence[Record], radius: int, size: int, grid: int = 8) -> HeldOut | None:
    """Held-out pair accuracy of AffinityNet against the ground-truth masks; None without
    held-out masks."""
    from wsss.methods.randomwalk import affinity_features
    from wsss.models.affinitynet import half_offsets, pair_labels, pairwise_affinity

    records = sample(held_out, need_mask=True)
    if not records:
        return None
    images = _bounded(records, size)
    offsets = half_offsets(radius)

    def measure(model: nn.Module) -> dict[str, float]:
        right = np.zeros(2)
        total = np.zeros(2)
        for rec in records:
            image = images[rec.id].to(_device(model))[0]
            features = affinity_features(model, image)[None]
            mask = torch.from_numpy(read_mask(rec.mask).astype(np.int64))[None, None].float()
            mask = F.interpolate(mask, image.shape[-2:], mode="nearest")[0, 0].long()
            cells = mask[grid // 2 :: grid, grid // 2 :: grid]
            padded = torch.full(features.shape[-2:], IGNORE, dtype=torch.long)
            padded[: cells.shape[0], : cells.shape[1]] = cells
            aff, valid = pairwise_affinity(features, offsets)
            l_i, l_j = pair_labels(padded[None].to(aff.device), offsets)
            known = (l_i != IGNORE) & (l_j != IGNORE) & valid[None]
            same = l_i == l_j
            predicted = aff > 0.5
            for k, subset in enumerate((known & same, known & ~same)):
                total[k] += float(subset.sum())
                right[k] += float((subset & (predicted == same)).sum())
        accuracy = [100 * r / t for r, t in zip(right, total) if t > 0]
        return {"val_pair_accuracy": round(float(np.mean(accuracy)) if accuracy else 0.0, 2)}

    return HeldOut("val_pair_accuracy", 50.0, "a constant guess (balanced accuracy)", measure)


def segmentation(held_out: Sequence[Record], label_names: list[str], size: int) -> HeldOut | None:
    """Held-out mIoU of a segmentation network (``model(images)`` -> logits at input
    size); None without held-out masks."""
    records = sample(held_out, need_mask=True)
    if not records:
        return None
    images = _bounded(records, size)
    n = len(label_names)
    counts = np.zeros(n, np.int64)
    masks = {}
    for rec in records:
        mask = read_mask(rec.mask)
        masks[rec.id] = mask
        counts += np.bincount(mask[mask != IGNORE].ravel(), minlength=n)[:n]
    floor = np.zeros((n, n), np.int64)
    for mask in masks.values():
        floor += confusion(np.full_like(mask, int(counts.argmax())), mask, n)
    prior = scores(floor, label_names)["miou"]

    def measure(model: nn.Module) -> dict[str, float]:
        conf = np.zeros((n, n), np.int64)
        for rec in records:
            image = images[rec.id].to(_device(model))
            logits = model(image).float()
            mask = masks[rec.id]
            logits = F.interpolate(logits, mask.shape, mode="bilinear", align_corners=False)
            conf += confusion(logits[0].argmax(0).cpu().numpy().astype(np.uint8), mask, n)
        return {"val_miou": round(scores(conf, label_names)["miou"], 2)}

    return HeldOut("val_miou", round(prior, 2), "the split's most frequent label", measure)

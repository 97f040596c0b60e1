"""Inference over whole images: multi-scale + flip CAMs (AffinityNet eq. 1) and multi-scale
+ flip segmentation, batched over images of different sizes, by a segmentation network or
a single-stage one (WS-FCN: its masks)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.core.runtime import autocast
from wsss.core.settings import InferParams
from wsss.data.datasets import PAD_RGB
from wsss.methods.crf import dense_crf
from wsss.models.cam import CAMNet
from wsss.models.ngwp import SingleStageOutput
from wsss.models.wsfcn import WSFCN

log = logging.getLogger(__name__)

SCORE_CUT = 0.1  # single-stage inference: a class needs an image score above this ...
BG_POWER = 3.0  # ... and the averaged background mask is raised to this power


def capped_scales(
    height: int, width: int, scales: Sequence[float], max_pixels: int, name: str = ""
) -> list[float]:
    """``scales`` with each one lowered so that the rescaled image has at most
    ``max_pixels`` pixels (0: no limit); the change is logged (``name``: the image)."""
    check_scales(scales)
    if not max_pixels or height * width * max(scales) ** 2 <= max_pixels:
        return list(scales)
    top = math.sqrt(max_pixels / (height * width))
    capped = [min(s, top) for s in scales]
    log.info(
        "%s: %dx%d px is more than max_pixels %d at scales %s: scaled to %s instead",
        name or "image",
        width,
        height,
        max_pixels,
        ", ".join(f"{s:g}" for s in scales),
        ", ".join(f"{s:.3g}" for s in capped),
    )
    return capped


def check_scales(scales: Sequence[float]) -> None:
    """Refuse an empty list of scales or a scale that is not a positive finite number (a
    scale of 0 or less gives a 1-pixel image and constant maps)."""
    if len(scales) == 0:
        raise ValueError("scales: at least one image scale is needed")
    bad = [s for s in scales if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(
            f"scales: {', '.join(f'{s:g}' for s in bad)} is not a positive image scale "
            "(e.g. 0.5 halves the image, 1.0 keeps it)"
        )


def rescaled_batch(image: Tensor, scale: float, flip: bool) -> Tensor:
    """One image [3, H, W] resized by ``scale`` (bilinear) as a batch [1 or 2, 3, h, w],
    its mirror second when ``flip``."""
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    batch = F.interpolate(image[None], size, mode="bilinear", align_corners=False)
    return torch.cat([batch, batch.flip(-1)]) if flip else batch


@torch.no_grad()
def multiscale_cams(
    model: CAMNet,
    image: Tensor,
    classes: Sequence[int],
    scales: Sequence[float],
    flip: bool,
    amp: bool | str = False,
    max_pixels: int = 0,
    name: str = "",
) -> Tensor:
    """CAMs [K, H, W] in [0, 1] of ``classes`` for one image [3, H, W] in [0, 255].

    For each scale (and its horizontal flip) the maps ReLU(w_c^T f) are upsampled to the
    image size and summed; each class map is then divided by its maximum (eq. 1). Scales
    that would make the image larger than ``max_pixels`` are lowered (:func:`capped_scales`).
    """
    height, width = image.shape[-2:]
    scales = capped_scales(height, width, scales, max_pixels, name)
    device = next(model.parameters()).device
    index = torch.as_tensor(list(classes), dtype=torch.long, device=device)
    total = torch.zeros(len(classes), height, width, device=device)
    if len(classes) == 0:
        return total
    image = image.to(device)
    for scale in scales:
        batch = rescaled_batch(image, scale, flip)
        with autocast(device, amp):
            cams = model.cams(batch)[:, index].float()
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        total += F.interpolate(cams, (height, width), mode="bilinear", align_corners=False)[0]
    peak = total.flatten(1).max(1).values.view(-1, 1, 1)
    if not torch.isfinite(total).all():
        raise ValueError(
            f"{name or 'image'}: the CAMs of this image are not finite (NaN or inf): the CAM "
            "network has diverged or is damaged (see the health.json beside its model file)"
        )
    return total / (peak + 1e-5)


def label_logits(model: nn.Module, images: Tensor) -> Tensor:
    """Per-label logits [B, L, H, W] of images [B, 3, H, W]: a segmentation network's output,
    or a single-stage network's mask logits resized to the images (bilinear, corners
    aligned, as in its training)."""
    out = model(images)
    if isinstance(out, SingleStageOutput):
        return F.interpolate(
            out.mask_logits, images.shape[-2:], mode="bilinear", align_corners=True
        )
    return out


@torch.no_grad()
def segment(
    model: nn.Module,
    images: Sequence[Tensor],
    scales: Sequence[float],
    flip: bool,
    amp: bool | str = False,
    max_pixels: int = 0,
    names: Sequence[str] = (),
    score_cut: float = SCORE_CUT,
    bg_power: float = BG_POWER,
) -> list[Tensor]:
    """Class probabilities [L, H, W] for each image [3, H, W] in [0, 255] of a batch, by a
    segmentation network or a single-stage one.

    A segmentation network: at each scale the images are resized, padded to a common size
    and segmented in one batch (the flipped batch's logits are flipped back and added); the
    softmax of each, cropped and resized back, is averaged over the scales. A single-stage
    network (WS-FCN): :func:`segment_single_stage` with ``score_cut`` and ``bg_power``. An
    image that a scale would make larger than ``max_pixels`` gets a lower scale there
    (:func:`capped_scales`).
    """
    if isinstance(model, WSFCN):
        return [
            segment_single_stage(
                model, im, scales, flip, amp, max_pixels, name, score_cut, bg_power
            )
            for im, name in zip(images, list(names) or [""] * len(images))
        ]
    device = next(model.parameters()).device
    totals: list[Tensor | None] = [None] * len(images)
    per_image = [
        capped_scales(im.shape[1], im.shape[2], scales, max_pixels, n)
        for im, n in zip(images, list(names) or [""] * len(images))
    ]
    for k in range(len(scales)):
        sizes = [
            (max(1, round(im.shape[1] * s[k])), max(1, round(im.shape[2] * s[k])))
            for im, s in zip(images, per_image)
        ]
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
        batch = torch.tensor(PAD_RGB).view(1, 3, 1, 1).repeat(len(images), 1, height, width)
        for i, (im, (h, w)) in enumerate(zip(images, sizes)):
            batch[i, :, :h, :w] = F.interpolate(
                im[None], (h, w), mode="bilinear", align_corners=False
            )[0]
        batch = batch.to(device)
        with autocast(device, amp):
            logits = label_logits(model, batch).float()
            if flip:
                logits = logits + label_logits(model, batch.flip(-1)).float().flip(-1)
        for i, (im, (h, w)) in enumerate(zip(images, sizes)):
            probs = logits[i, :, :h, :w].softmax(0)
            probs = F.interpolate(probs[None], im.shape[1:], mode="bilinear", align_corners=False)[
                0
            ]
            totals[i] = probs if totals[i] is None else totals[i] + probs
    return [t / len(scales) for t in totals]


@torch.no_grad()
def segment_single_stage(
    model: WSFCN,
    image: Tensor,
    scales: Sequence[float],
    flip: bool,
    amp: bool | str = False,
    max_pixels: int = 0,
    name: str = "",
    score_cut: float = SCORE_CUT,
    bg_power: float = BG_POWER,
) -> Tensor:
    """Mask probabilities [L, H, W] of one image [3, H, W] in [0, 255] by a single-stage
    network, as its reference infers on val.

    The image at every scale (and its mirror), unpadded, gives masks (the softmax over the
    labels, resized to the image and flipped back) and class scores sigmoid(y_c); the masks
    are averaged over all of these inputs. A class whose score stays at or below
    ``score_cut`` on every input is dropped (its mask set to 0; without a background
    class the best-scoring class is always kept); the averaged background mask, if any, is
    raised to ``bg_power``; the result is normalised to sum to 1 at every pixel.
    ``score_cut`` 0 keeps every class (e.g. when the image labels are known)."""
    height, width = image.shape[-2:]
    scales = capped_scales(height, width, scales, max_pixels, name)
    device = next(model.parameters()).device
    image = image.to(device)
    total, best, count = None, None, 0
    for scale in scales:
        batch = rescaled_batch(image, scale, flip)
        with autocast(device, amp):
            out = model(batch)
        masks = F.interpolate(
            out.masks.float(), (height, width), mode="bilinear", align_corners=False
        )
        if flip:
            masks = torch.cat([masks[:1], masks[1:].flip(-1)])
        scores = torch.sigmoid(out.scores.float()).amax(0)
        total = masks.sum(0) if total is None else total + masks.sum(0)
        best = scores if best is None else torch.maximum(best, scores)
        count += len(masks)
    assert total is not None and best is not None
    mean = total / count
    offset = int(out.background)
    keep = best > score_cut
    if not offset and not keep.any():
        keep[best.argmax()] = True
    mean[offset:] *= keep.to(mean.dtype)[:, None, None]
    if offset:
        mean[0] = mean[0].pow(bg_power)
    return mean / mean.sum(0, keepdim=True).clamp(min=1e-12)


def labels_from_probs(
    image: np.ndarray, probs: Tensor, params: InferParams, keep: Sequence[int] | None = None
) -> np.ndarray:
    """uint8 label map [H, W]: argmax of ``probs`` [L, H, W], after a dCRF if enabled;
    ``keep``: the only labels a pixel may take (None: all)."""
    scores = probs.cpu().numpy()
    if keep is not None:
        absent = np.setdiff1d(np.arange(len(scores)), np.asarray(keep, dtype=np.int64))
        scores = scores.copy()
        scores[absent] = 0.0
    if params.crf:
        scores = dense_crf(image, scores, params)
        if keep is not None:
            scores[absent] = -1.0
    return scores.argmax(0).astype(np.uint8)

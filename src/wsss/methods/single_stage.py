"""The single-stage training signal of Araslanov & Roth (CVPR 2020), which WS-FCN keeps.

The network's head gives class logits z_c at every position of a grid (stride 4) and
(:mod:`wsss.models.ngwp`, part of the network's forward pass):

- mask logits: a constant background logit (1) before the class logits when the dataset has
  a background class, the class logits alone when it has none (e.g. MSRC-21, whose pixels
  all belong to some class or are void): the masks m = softmax(mask logits) then divide
  every pixel among the classes only;
- class scores, per foreground class c: normalised global weighted pooling (nGWP) plus the
  focal mask penalty,

      y_c = sum_i m_c(i) z_c(i) / (1 + sum_i m_c(i))  +  (1 - mbar_c)^p log(lambda + mbar_c),

  mbar_c the mean of m_c, lambda = 0.01 and p = 3 in the reference; they are scored against
  the image labels by the multi-label soft-margin loss;

and here, the training signal:

- a pseudo ground truth: the detached masks refined by PAMR (:mod:`wsss.methods.pamr`), resized to
  the image, masks of classes absent from the image label set to zero; a pixel takes class
  c when m_c(i) > max(cut_c * max_i m_c(i), 0.2) for exactly one c (cut 0.7 for the
  background, 0.6 for the other classes); no class or several: ignored;
- a class-balanced cross-entropy of the mask logits (resized to the image) against it: the
  pixels of class c weigh (n - n_c) / (1 + n), n_c the pixels of class c and n those of all
  classes in the image's pseudo ground truth (for two classes these weights are in the ratio
  of the inverse frequencies); the mean over all pixels, ignored ones counting zero; an
  image whose pseudo ground truth misses one of its labelled classes (or the background)
  adds nothing.

The total loss is the classification loss, plus the segmentation loss (weight 1) once
the classification-only warm-up is over (:func:`single_stage_loss`).

Without a background class the same rules hold with the foreground cut for every class and
no background to find; an image whose pseudo ground truth holds one class only adds no
segmentation loss (its class weight (n - n_c) / (1 + n) is ~0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss.data.manifest import IGNORE
from wsss.methods.hfpl import AddOn, with_addon
from wsss.methods.pamr import DILATIONS, ITERATIONS, pamr
from wsss.models.ngwp import BACKGROUND_LOGIT, SingleStageOutput

FOREGROUND_CUT = 0.6
BACKGROUND_CUT = 0.7
LOWEST_CUT = 0.2
MASK_LOSS_WEIGHT = 1.0


def clean_masks(masks: Tensor, labels: Tensor, background: bool) -> Tensor:
    """Zero the masks of the classes absent from the image labels: masks
    [B, C + background, H, W], labels [B, C] in {0, 1} -> same shape."""
    keep = labels.to(masks.dtype)
    if background:
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep], 1)
    return masks * keep[:, :, None, None]


def pseudo_ground_truth(
    masks: Tensor,
    labels: Tensor,
    background: bool,
    cut: float = FOREGROUND_CUT,
    background_cut: float = BACKGROUND_CUT,
    lowest: float = LOWEST_CUT,
) -> Tensor:
    """Per-pixel targets of (refined) masks [B, C + background, H, W] in [0, 1] and image
    labels [B, C]: indices into the mask channels [B, H, W] (int64), :data:`IGNORE` where
    no channel or several pass their threshold max(cut * peak, lowest). Classes absent from
    the labels never appear."""
    masks = clean_masks(masks, labels, background)
    peak = masks.flatten(2).amax(-1)
    cuts = torch.full_like(peak, cut)
    if background:
        cuts[:, 0] = background_cut
    threshold = (peak * cuts).clamp(min=lowest)
    above = masks > threshold[:, :, None, None]
    target = above.to(torch.uint8).argmax(1)
    return target.masked_fill(above.sum(1) != 1, IGNORE)


def balanced_cross_entropy(
    logits: Tensor, target: Tensor, labels: Tensor, background: bool
) -> Tensor:
    """Class-balanced cross-entropy of each image: mask logits [B, K, H, W] (K = C +
    background), targets [B, H, W] (:data:`IGNORE` ignored), labels [B, C] -> [B].

    Pixels of class c weigh (n - n_c) / (1 + n); the mean runs over all H W pixels; an image
    gets 0 unless its targets hold exactly its labelled classes (and the background)."""
    k = logits.shape[1]
    valid = target != IGNORE
    index = target.masked_fill(~valid, 0)
    counts = F.one_hot(index, k).mul(valid[..., None]).flatten(1, 2).sum(1).to(logits.dtype)
    total = counts.sum(1, keepdim=True)
    class_weight = (total - counts) / (1 + total)  # [B, K]
    pixel_weight = class_weight.gather(1, index.flatten(1)).view_as(target) * valid
    ce = F.cross_entropy(logits, index, reduction="none")
    loss = (pixel_weight * ce).flatten(1).mean(1)
    complete = (counts > 0).sum(1) == labels.sum(1) + int(background)
    return loss * complete


def single_stage_loss(
    output: SingleStageOutput,
    images: Tensor,
    labels: Tensor,
    segmentation_loss: bool,
    iterations: int = ITERATIONS,
    dilations: Sequence[int] = DILATIONS,
    mask_weight: float = MASK_LOSS_WEIGHT,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss: multi-label soft margin of the class scores, plus ``mask_weight`` times
    the batch mean of :func:`balanced_cross_entropy` against the pseudo ground truth of the
    PAMR-refined masks when ``segmentation_loss`` (off during the warm-up).

    images: the input crops, RGB in [0, 255] [B, 3, H, W]; labels [B, C] in {0, 1}.
    Returns the loss and its terms (unweighted) by name; computed in float32."""
    labels = labels.float()
    terms = {"classification": F.multilabel_soft_margin_loss(output.scores.float(), labels)}
    loss = terms["classification"]
    if segmentation_loss:
        size = images.shape[-2:]
        with torch.no_grad():
            refined = pamr(images, output.masks.detach(), iterations, dilations)
            refined = F.interpolate(refined, size, mode="bilinear", align_corners=True)
            target = pseudo_ground_truth(refined, labels, output.background)
        logits = F.interpolate(
            output.mask_logits.float(), size, mode="bilinear", align_corners=True
        )
        terms["segmentation"] = balanced_cross_entropy(
            logits, target, labels, output.background
        ).mean()
        loss = loss + mask_weight * terms["segmentation"]
    return loss, terms


def wsfcn_loss(
    output: SingleStageOutput,
    images: Tensor,
    labels: Tensor,
    segmentation: bool,
    addon: AddOn,
) -> tuple[Tensor, dict[str, Tensor]]:
    """WS-FCN's training loss of a batch and its terms (the mask term recorded as 0 while
    it is off): :func:`single_stage_loss`, and with the HFPL add-on (``addon.active``)
    (1 - w) classification + w sampling + lambda similarity on the class logits shifted by
    the background logit, so that the multinomial posterior is the masks' softmax and the
    binomial one says where a class beats the background; then the mask term."""
    total, terms = single_stage_loss(output, images, labels, segmentation)
    if not segmentation:
        terms["segmentation"] = total.new_zeros(())
    if not addon.active:
        return total, terms
    shift = BACKGROUND_LOGIT if output.background else 0.0
    total, extra = with_addon(
        terms["classification"],
        "classification",
        output.class_logits - shift,
        images,
        labels,
        addon,
    )
    terms.update(extra)
    if segmentation:
        total = total + MASK_LOSS_WEIGHT * terms["segmentation"]
    return total, terms

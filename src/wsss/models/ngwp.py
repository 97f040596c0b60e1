"""The class scores and masks of a single-stage network (Araslanov & Roth, CVPR 2020; kept
by WS-FCN), part of its forward pass: mask logits (a constant background logit before the
class logits when the dataset has a background class), masks = their softmax, and per
class normalised global weighted pooling plus the focal mask penalty,

    y_c = sum_i m_c(i) z_c(i) / (1 + sum_i m_c(i))  +  (1 - mbar_c)^p log(lambda + mbar_c),

mbar_c the mean of m_c, lambda = 0.01 and p = 3 in the reference. The training signal built
on them is :mod:`wsss.methods.single_stage`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BACKGROUND_LOGIT = 1.0
NGWP_EPS = 1.0
FOCAL_LAMBDA = 0.01
FOCAL_P = 3.0


@dataclass
class SingleStageOutput:
    """What a single-stage network returns (h, w: its output grid, stride 4).

    class_logits [B, C, h, w]: the class logits z at every position (foreground classes);
    mask_logits [B, C + background, h, w]: the background logit, if any, then z;
    masks [B, C + background, h, w]: softmax of the mask logits over dimension 1;
    scores [B, C]: nGWP + focal penalty of each class (logits of the image labels)."""

    class_logits: Tensor
    mask_logits: Tensor
    masks: Tensor
    scores: Tensor

    @property
    def background(self) -> bool:
        """Whether the masks have a background channel (the first)."""
        return self.mask_logits.shape[1] > self.class_logits.shape[1]


def mask_logits(class_logits: Tensor, background: bool) -> Tensor:
    """[B, C, h, w] -> [B, C + background, h, w]: the constant background logit first."""
    if not background:
        return class_logits
    return torch.cat([torch.full_like(class_logits[:, :1], BACKGROUND_LOGIT), class_logits], 1)


def ngwp(logits: Tensor, masks: Tensor, eps: float = NGWP_EPS) -> Tensor:
    """Normalised global weighted pooling sum_i m(i) z(i) / (eps + sum_i m(i)):
    logits z and masks m [B, K, h, w] -> [B, K]."""
    return (logits * masks).flatten(2).sum(-1) / (eps + masks.flatten(2).sum(-1))


def focal_penalty(masks: Tensor, lam: float = FOCAL_LAMBDA, p: float = FOCAL_P) -> Tensor:
    """(1 - mbar)^p log(lambda + mbar), mbar the spatial mean of each mask:
    [B, K, h, w] -> [B, K] (<= 0; near 0 for large masks, very negative for empty ones)."""
    mean = masks.flatten(2).mean(-1)
    return (1 - mean).pow(p) * torch.log(lam + mean)


def single_stage_output(
    class_logits: Tensor,
    background: bool,
    focal_lambda: float = FOCAL_LAMBDA,
    focal_p: float = FOCAL_P,
) -> SingleStageOutput:
    """Masks and class scores of the class logits z [B, C, h, w]."""
    logits = mask_logits(class_logits, background)
    masks = logits.softmax(1)
    scores = ngwp(logits, masks) + focal_penalty(masks, focal_lambda, focal_p)
    return SingleStageOutput(class_logits, logits, masks, scores[:, int(background) :])

"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as used by WS-FCN.

Masks are refined by repeated local averaging whose weights come from the image colours.
For a pixel i and its neighbours N(i) (the 8 neighbours of the 3x3 window at each dilation d,
1, 2, 4, 8, 12, 24 in the reference: 48 neighbours),

    k(i, j) = -mean_channels |I_i - I_j| / (0.1 sigma_i)
    a(i, j) = softmax over j in N(i) of k(i, j)
    m_i <- sum_{j in N(i)} a(i, j) m_j                 (repeated 10 times in the reference)

where sigma_i is the standard deviation, per colour channel, of the samples of the 3x3
windows of all dilations around i (the centre counted once per dilation). Borders are
replicated. The weights of each pixel sum to one, so a constant mask stays constant, and a
scale of the colours does not change them: images may be in [0, 255] or [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DILATIONS = (1, 2, 4, 8, 12, 24)
ITERATIONS = 10
_CENTRE = 4  # index of the centre in a flattened 3x3 window


def windows(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """The 3x3 windows of every pixel at each dilation, borders replicated:
    [B, K, H, W] -> [B, K, 9 * len(dilations), H, W] (row-major within each window)."""
    h, w = x.shape[-2:]
    samples = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        for dy in (0, d, 2 * d):
            for dx in (0, d, 2 * d):
                samples.append(padded[..., dy : dy + h, dx : dx + w])
    return torch.stack(samples, 2)


def _neighbours(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """The windows without their centres: [B, K, H, W] -> [B, K, 8 * len(dilations), H, W]."""
    all_samples = windows(x, dilations)
    keep = [i for i in range(all_samples.shape[2]) if i % 9 != _CENTRE]
    return all_samples[:, :, keep]


def affinities(images: Tensor, dilations: Sequence[int] = DILATIONS) -> Tensor:
    """The weights a(i, j): images [B, 3, H, W] -> [B, 8 * len(dilations), H, W], summing to
    one over dimension 1 (the neighbours in the order of :func:`windows`)."""
    images = images.float()
    sigma = windows(images, dilations).std(2, keepdim=True)
    distance = (_neighbours(images, dilations) - images.unsqueeze(2)).abs()
    kernel = -distance / (1e-8 + 0.1 * sigma)
    return kernel.mean(1).softmax(1)


def pamr(
    images: Tensor,
    masks: Tensor,
    iterations: int = ITERATIONS,
    dilations: Sequence[int] = DILATIONS,
) -> Tensor:
    """Refine ``masks`` [B, K, h, w] along the colours of ``images`` [B, 3, H, W] (any
    range): the images are resized to the masks' size (bilinear), the result is
    [B, K, h, w] in float32. The single-stage loss calls it on detached masks."""
    if images.shape[-2:] != masks.shape[-2:]:
        images = F.interpolate(
            images.float(), masks.shape[-2:], mode="bilinear", align_corners=True
        )
    weights = affinities(images, dilations).unsqueeze(1)  # [B, 1, P, h, w]
    masks = masks.float()
    for _ in range(iterations):
        masks = (_neighbours(masks, dilations) * weights).sum(2)
    return masks

"""AffinityNet (paper section 3.2, fig. 3) and its class-agnostic pair loss (eq. 4-10).

Features of the backbone's last three levels are each reduced by a 1x1 convolution,
brought to the stride-8 grid, concatenated and adapted by a 1x1 convolution (ELU after
each). The affinity of two grid positions is ``W_ij = exp(-mean_d |f_i - f_j|)`` (eq. 3,
with the channel mean of the released code): see :func:`wsss.randomwalk.pairwise_affinity`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.data.manifest import IGNORE
from wsss.models.backbones import Backbone, build_backbone, normalize
from wsss.randomwalk import neighbour_offsets, pairwise_affinity

# Widths (three reductions, adaptation) of the released code and of the paper.
WIDTHS = {"code": (64, 128, 256, 448), "paper": (128, 256, 512, 896)}


class AffinityNet(nn.Module):
    """Image [B, 3, H, W] in [0, 255] -> affinity features [B, D, ceil(H/8), ceil(W/8)]."""

    def __init__(self, backbone: Backbone, widths: str = "code"):
        super().__init__()
        if widths not in WIDTHS:
            raise ValueError(f"widths must be one of {sorted(WIDTHS)}, not '{widths}'")
        *reduced, adapted = WIDTHS[widths]
        self.backbone = backbone
        self.reduce = nn.ModuleList(
            nn.Conv2d(c, w, 1, bias=False) for c, w in zip(backbone.channels[-3:], reduced)
        )
        self.adapt = nn.Conv2d(sum(reduced), adapted, 1, bias=False)
        self.widths = widths

    def new_modules(self) -> list[nn.Module]:
        return [self.reduce, self.adapt]

    def forward(self, images: Tensor) -> Tensor:
        levels = self.backbone(normalize(images, self.backbone.norm))[-3:]
        size = levels[0].shape[-2:]  # the third-last level is at stride 8 in every backbone
        parts = []
        for conv, level in zip(self.reduce, levels):
            x = F.elu(conv(level))
            if x.shape[-2:] != size:
                x = F.interpolate(x, size, mode="bilinear", align_corners=False)
            parts.append(x)
        return F.elu(self.adapt(torch.cat(parts, 1)))


def half_offsets(radius: int) -> list[tuple[int, int]]:
    """One offset of each symmetric pair within ``radius`` (dy > 0, or dy = 0 and dx > 0)."""
    return [(dy, dx) for dy, dx in neighbour_offsets(radius) if dy > 0 or (dy == 0 and dx > 0)]


def pair_labels(labels: Tensor, offsets: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Labels of both ends of every pair: ``labels`` int64 [B, h, w] -> (``l_i``, ``l_j``)
    each [B, K, h, w]; ``l_j`` is 255 where the neighbour falls outside the grid."""
    batch, height, width = labels.shape
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(labels, (pad, pad, pad, pad), value=IGNORE)
    l_j = torch.stack(
        [
            padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width]
            for dy, dx in offsets
        ],
        1,
    )
    return labels[:, None].expand_as(l_j), l_j


def affinity_loss(
    features: Tensor, labels: Tensor, radius: int, has_background: bool
) -> tuple[Tensor, dict[str, float]]:
    """The balanced loss of eq. 10 over pairs at distance 0 < d < ``radius``.

    features [B, D, h, w]; labels int64 [B, h, w] on the same grid (255 = neutral). Pairs
    with a neutral end are ignored; same-label pairs are positive (background pairs apart
    from foreground ones), different-label pairs negative.
    ``L = L_fg / 4 + L_bg / 4 + L_neg / 2`` with ``L_pos = -mean log W`` and
    ``L_neg = -mean log(1 - W)``, each mean over its own subset. Without a background class
    every positive pair is foreground: ``L = L_fg / 2 + L_neg / 2``. A subset empty in this
    batch is left out and the weights of the others renormalised.
    """
    offsets = half_offsets(radius)
    affinity, _ = pairwise_affinity(features.float(), offsets)
    l_i, l_j = pair_labels(labels, offsets)
    known = (l_i != IGNORE) & (l_j != IGNORE)
    positive = known & (l_i == l_j)
    background = positive & (l_i == 0) if has_background else torch.zeros_like(positive)
    subsets = {
        "fg": (positive & ~background, 0.25 if has_background else 0.5, True),
        "bg": (background, 0.25, True),
        "neg": (known & (l_i != l_j), 0.5, False),
    }
    total, weight, stats = features.new_zeros(()), 0.0, {}
    for name, (mask, w, is_positive) in subsets.items():
        if not mask.any():
            continue
        a = affinity[mask]
        term = -torch.log(a + 1e-5) if is_positive else -torch.log(1.0 + 1e-5 - a)
        total = total + w * term.mean()
        weight += w
        stats[name] = float(term.mean().detach())
        stats[f"{name}_pairs"] = int(mask.sum())
    return total / max(weight, 1e-8), stats


def from_arch(arch: dict, num_labels: int) -> AffinityNet:
    """An :class:`AffinityNet` as ``arch`` describes it (random weights; class-agnostic, so
    ``num_labels`` is not used)."""
    return AffinityNet(
        build_backbone(arch["backbone"], arch["output_stride"], weights=None), arch["widths"]
    )

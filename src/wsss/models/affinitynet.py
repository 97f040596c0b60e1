"""AffinityNet (paper section 3.2, fig. 3) and its class-agnostic pair loss (eq. 4-10).

Features of the backbone's last three levels are each reduced by a 1x1 convolution,
brought to the stride-8 grid, concatenated and adapted by a 1x1 convolution (ELU after
each). The affinity of two grid positions is ``W_ij = exp(-mean_d |f_i - f_j|)`` (eq. 3,
with the channel mean of the released code): :func:`pairwise_affinity` below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.data.manifest import IGNORE
from wsss.models.backbones import Backbone, build_backbone, normalize

# Widths (three reductions, adaptation) of the released code and of the paper.
WIDTHS = {"code": (64, 128, 256, 448), "paper": (128, 256, 512, 896)}


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) with 0 < dy^2 + dx^2 < radius^2, in lexicographic order.

    Both directions of every pair are listed; the centre (0, 0) is not. ``radius`` 5 gives
    the 68 offsets of AffinityNet's pair set, ``radius`` 1 none.
    """
    if radius < 1:
        raise ValueError(f"radius must be at least 1, got {radius}")
    span = range(-(radius - 1), radius)
    return [(dy, dx) for dy in span for dx in span if 0 < dy * dy + dx * dx < radius * radius]


def neighbour_mask(
    offsets: list[tuple[int, int]],
    height: int,
    width: int,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bool [K, h, w]: whether position (y, x) + offsets[k] lies inside the h x w grid."""
    ys = torch.arange(height, device=device)[:, None]
    xs = torch.arange(width, device=device)[None, :]
    masks = [
        (ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)
        for dy, dx in offsets
    ]
    if not masks:
        return torch.zeros(0, height, width, dtype=torch.bool, device=device)
    return torch.stack(masks)


def pairwise_affinity(features: Tensor, offsets: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """Affinities between every position and its neighbours at the given offsets (eq. 3).

    Args:
        features: [B, D, h, w].
        offsets: K offsets (dy, dx), e.g. from :func:`neighbour_offsets`.

    Returns:
        ``affinity`` [B, K, h, w] with ``affinity[b, k, y, x] =
        exp(-mean_d |f[b, d, y, x] - f[b, d, y + dy_k, x + dx_k]|)`` where the neighbour is
        inside the grid and 0 elsewhere, and ``valid`` bool [K, h, w], the in-grid mask.
        Differentiable with respect to ``features``.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B, D, h, w], got shape {tuple(features.shape)}")
    batch, _, height, width = features.shape
    valid = neighbour_mask(offsets, height, width, features.device)
    if not offsets:
        return features.new_zeros(batch, 0, height, width), valid
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(features, (pad, pad, pad, pad))

    def shifted(dy: int, dx: int) -> Tensor:  # [B, D, h, w]: f at (y + dy, x + dx), 0 outside
        return padded[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width]

    distance = features.new_empty(batch, len(offsets), height, width)
    for k, (dy, dx) in enumerate(offsets):
        distance[:, k] = (features - shifted(dy, dx)).abs_().mean(1)
    return torch.exp(-distance) * valid, valid


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

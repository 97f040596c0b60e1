"""HFPL, the binomial add-on of any classifier (seed 002; reference.md section 2):
importance sampling in place of (or mixed with) global average pooling, and a feature
similarity loss that asks pixels of similar colour for similar predictions.

Both read the classifier's *logit maps* z [B, C, h, w] (the classifier applied at every
position before pooling) and a posterior that turns them into class probabilities:

- ``binomial`` (the paper): C independent binary problems, p_c = sigmoid(z_c);
- ``multinomial`` (what the paper replaces): mutually exclusive classes,
  p = softmax over the classes (plus a constant zero background logit when the dataset has
  a background class), so that the paper's claim "binomial beats multinomial" can be
  measured rather than assumed.

Importance sampling (eq. of the paper's section 3.1): for every image b and class c, K
positions x_1..x_K are drawn with replacement with probability proportional to
p_c(x) (detached); each sampled prediction p_c(x_k) is scored against the image label y_c
by the binary cross-entropy and the K scores are averaged,

    L_IS = mean_{b, c, k} BCE(p_{b,c}(x_k), y_{b,c}),

which for the binomial posterior is the multi-label soft-margin loss on the sampled logits
z_c(x_k), as in the reference code. Every class is sampled, present or absent: an absent
class is pushed down where it is most active. The classifier loss mixes it with the GAP
loss: (1 - w) L_GAP + w L_IS (reference w = 0.2, K = 10).

Feature similarity loss (section 3.2): for pixel pairs (i, j) of the feature grid,

    d_x = ||c_i - c_j||_1 / 3, clipped to [0, 1]     (RGB colours in [0, 1])
    s   = tanh(mu + logit(d_x))                      (< 0 for similar, > 0 for distinct colours)
    d_y = 0.5 ||y_i - y_j||^2                        (y: present-class probability maps)
    g   = exp(-|i - j|^2 / (2 sigma^2)) / (2 pi sigma^2)   (feature pixels)
    L_FS = -(1 / (B h w)) sum_b sum_{i, j} g_ij d_y s_ij,

over ordered pairs (both (i, j) and (j, i)), mu = 2.5, sigma = 5 in the reference. The
reference forms all (hw)^2 pairs; :func:`similarity_loss` sums only the pairs within
``radius`` (3 sigma by default: the Gaussian there is 1 % of its peak), offset by offset,
so its memory is O(B h w x window) with no C factor: it expands
||y_i - y_j||^2 = |y_i|^2 + |y_j|^2 - 2 y_i . y_j and keeps only the colour-and-distance
weights per offset. :func:`similarity_loss_all_pairs` is the reference's all-pairs form, for
the tests and the benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

POSTERIORS = ("binomial", "multinomial")
EPS = 1e-5


@dataclass(frozen=True)
class AddOn:
    """The HFPL settings of a classifier training (all off: the plain GAP classifier).

    ``sampling_weight`` w mixes the losses as (1 - w) GAP + w IS; ``samples`` is K;
    ``similarity_weight`` multiplies L_FS; ``similarity_radius`` in feature pixels
    (0: 3 sigma); ``background``: whether the multinomial posterior has a background
    logit (the dataset has a background class)."""

    posterior: str = "binomial"
    sampling_weight: float = 0.0
    samples: int = 10
    similarity_weight: float = 0.0
    similarity_mu: float = 2.5
    similarity_sigma: float = 5.0
    similarity_radius: int = 0
    background: bool = True

    def __post_init__(self) -> None:
        if self.posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, not {self.posterior!r}")
        if not 0.0 <= self.sampling_weight <= 1.0:
            raise ValueError(f"sampling_weight must lie in [0, 1], not {self.sampling_weight}")

    @classmethod
    def of(cls, params: object, background: bool) -> AddOn:
        """The add-on of a classifier's settings (:class:`wsss.settings.ClassifierParams`);
        ``background``: whether the dataset has a background class."""
        names = [f.name for f in fields(cls) if f.name != "background"]
        return cls(**{name: getattr(params, name) for name in names}, background=background)

    @property
    def active(self) -> bool:
        """Whether the add-on changes the plain GAP loss at all."""
        return self.sampling_weight > 0 or self.similarity_weight > 0

    @property
    def radius(self) -> int:
        """The similarity window's radius in feature pixels."""
        return self.similarity_radius or math.ceil(3 * self.similarity_sigma)


def log_probabilities(logits: Tensor, posterior: str, background: bool) -> tuple[Tensor, Tensor]:
    """log p and log(1 - p) of every class, [B, C, ...] each, from logits [B, C, ...].

    binomial: p = sigmoid(z); multinomial: p = softmax over the classes (and a zero
    background logit first when ``background``)."""
    if posterior == "binomial":
        return F.logsigmoid(logits), F.logsigmoid(-logits)
    if background:
        logits = torch.cat([torch.zeros_like(logits[:, :1]), logits], 1)
    log_p = torch.log_softmax(logits, 1)[:, int(background) :]
    log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - EPS))
    return log_p, log_not_p


def sample_positions(probs: Tensor, samples: int) -> Tensor:
    """Positions drawn with replacement, probability proportional to ``probs``.

    probs [B, C, N] (non-negative) -> indices [B, C, samples] into N. Uses torch's global
    generator (the training seeds it per step)."""
    b, c, n = probs.shape
    weights = probs.detach().float().reshape(b * c, n) + EPS
    return torch.multinomial(weights, samples, replacement=True).reshape(b, c, samples)


def sampling_loss(logits: Tensor, targets: Tensor, addon: AddOn) -> Tensor:
    """L_IS: logit maps [B, C, h, w], image labels [B, C] in {0, 1} -> scalar.

    Gradients reach the logits only at the sampled positions."""
    log_p, log_not_p = log_probabilities(logits.flatten(2), addon.posterior, addon.background)
    index = sample_positions(log_p.exp(), addon.samples)
    picked_p = log_p.gather(2, index)
    picked_not_p = log_not_p.gather(2, index)
    y = targets[:, :, None].to(picked_p.dtype)
    return -(y * picked_p + (1 - y) * picked_not_p).mean()


def class_maps(logits: Tensor, targets: Tensor, addon: AddOn) -> Tensor:
    """The predictions y of L_FS: the posterior's probabilities of the image's present
    classes, zero for the absent ones. [B, C, h, w] -> [B, C, h, w]."""
    log_p, _ = log_probabilities(logits, addon.posterior, addon.background)
    return log_p.exp() * targets[:, :, None, None].to(log_p.dtype)


def colour_grid(images: Tensor, size: tuple[int, int]) -> Tensor:
    """RGB images in [0, 255] [B, 3, H, W] -> colours in [0, 1] on the feature grid
    [B, 3, h, w] (area-weighted)."""
    small = F.interpolate(images.float() / 255.0, size, mode="bilinear", antialias=True)
    return small.clamp(0.0, 1.0)


def colour_similarity(distance: Tensor, mu: float) -> Tensor:
    """s = tanh(mu + logit(d_x)) for colour distances d_x in [0, 1]."""
    d = distance.clamp(0.0, 1.0)
    return torch.tanh(mu + torch.log((d + EPS) / (1 - d + EPS)))


def offsets(radius: int) -> list[tuple[int, int]]:
    """Half of the window's offsets (dy, dx) with 0 < dy^2 + dx^2 <= radius^2: one of each
    pair +-(dy, dx), which contribute equally to the loss."""
    return [
        (dy, dx)
        for dy in range(0, radius + 1)
        for dx in range(-radius, radius + 1)
        if (dy > 0 or dx > 0) and dy * dy + dx * dx <= radius * radius
    ]


def similarity_loss(
    colours: Tensor, maps: Tensor, mu: float = 2.5, sigma: float = 5.0, radius: int = 0
) -> Tensor:
    """L_FS over the pairs within ``radius`` feature pixels (0: 3 sigma).

    colours [B, 3, h, w] in [0, 1], maps y [B, C, h, w] -> scalar. Memory O(B h w) per
    offset for the weights (saved for the backward pass), O(B C h w) for the maps."""
    b, _, h, w = maps.shape
    radius = radius or math.ceil(3 * sigma)
    maps = maps.float()
    colours = colours.float()
    norms = (maps * maps).sum(1)  # |y_i|^2, [B, h, w]
    total = maps.new_zeros(())
    for dy, dx in offsets(radius):
        if dy >= h or abs(dx) >= w:
            continue
        # pairs (i, j = i + (dy, dx)): i over the rows / columns where j stays inside
        ys, ye = 0, h - dy
        xs, xe = max(0, -dx), w - max(0, dx)
        a = (slice(None), slice(None), slice(ys, ye), slice(xs, xe))
        j = (slice(None), slice(None), slice(ys + dy, ye + dy), slice(xs + dx, xe + dx))
        with torch.no_grad():
            d_x = (colours[a] - colours[j]).abs().sum(1) / 3.0
            g = math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma)) / (2 * math.pi * sigma**2)
            weight = g * colour_similarity(d_x, mu)  # [B, h', w']
        # 0.5 ||y_i - y_j||^2 = 0.5 (|y_i|^2 + |y_j|^2) - y_i . y_j
        d_y = 0.5 * (norms[a[:1] + a[2:]] + norms[j[:1] + j[2:]]) - (maps[a] * maps[j]).sum(1)
        total = total + (weight * d_y).sum()
    # each unordered pair stands for (i, j) and (j, i)
    return -2.0 * total / (b * h * w)


def similarity_loss_all_pairs(
    colours: Tensor, maps: Tensor, mu: float = 2.5, sigma: float = 5.0, radius: float | None = None
) -> Tensor:
    """The reference's all-pairs L_FS (memory O(B (hw)^2)); with ``radius``, only the pairs
    at most that far apart count. Same inputs as :func:`similarity_loss`."""
    b, c, h, w = maps.shape
    x = colours.float().flatten(2).transpose(1, 2)  # [B, hw, 3]
    y = maps.float().flatten(2).transpose(1, 2)  # [B, hw, C]
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    pos = torch.stack([rows.flatten(), cols.flatten()], 1).to(maps.device)
    dist = torch.cdist(pos, pos)  # [hw, hw]
    g = torch.exp(-0.5 * (dist / sigma) ** 2) / (2 * math.pi * sigma**2)
    if radius is not None:
        g = g * (dist <= radius)
    s = colour_similarity(torch.cdist(x, x, p=1.0) / 3.0, mu)
    d_y = 0.5 * torch.cdist(y, y, p=2.0) ** 2
    return -(g * d_y * s).sum() / (b * h * w)


def classifier_loss(
    logits: Tensor, images: Tensor, targets: Tensor, addon: AddOn
) -> tuple[Tensor, dict[str, Tensor]]:
    """The CAM classifier's loss with the add-on: (1 - w) L_GAP + w L_IS + lambda L_FS.

    logits: logit maps [B, C, h, w]; images: the input crops, RGB in [0, 255]
    [B, 3, H, W]; targets: image labels [B, C] in {0, 1}. Returns the loss and its terms
    (unweighted) by name. Computed in float32 whatever the autocast."""
    gap = F.multilabel_soft_margin_loss(logits.float().mean((2, 3)), targets.float())
    return with_addon(gap, "gap", logits, images, targets, addon)


def with_addon(
    pooled: Tensor, name: str, logits: Tensor, images: Tensor, targets: Tensor, addon: AddOn
) -> tuple[Tensor, dict[str, Tensor]]:
    """Any classifier's loss with the add-on: (1 - w) ``pooled`` + w L_IS + lambda L_FS.

    pooled: the classifier's own image-level loss (scalar; GAP's for the CAM network, nGWP's
    for WS-FCN), recorded as the term ``name``; the other inputs as in
    :func:`classifier_loss`. Returns the loss and its terms (unweighted) by name."""
    logits = logits.float()
    targets = targets.float()
    terms: dict[str, Tensor] = {name: pooled}
    loss = (1.0 - addon.sampling_weight) * pooled
    if addon.sampling_weight > 0:
        terms["sampling"] = sampling_loss(logits, targets, addon)
        loss = loss + addon.sampling_weight * terms["sampling"]
    if addon.similarity_weight > 0:
        colours = colour_grid(images, logits.shape[-2:])
        maps = class_maps(logits, targets, addon)
        terms["similarity"] = similarity_loss(
            colours, maps, addon.similarity_mu, addon.similarity_sigma, addon.radius
        )
        loss = loss + addon.similarity_weight * terms["similarity"]
    return loss, terms

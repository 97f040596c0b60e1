"""HFPL, the binomial add-on of any classifier (seed 002; reference.md section 2):
importance sampling in place of (or mixed with) global average pooling, and a feature
similarity loss that asks pixels of similar colour for similar predictions.

Both read the classifier's *logit maps* z [B, C, h, w] (the classifier applied at every
position before pooling, C foreground classes) and a posterior:

- ``binomial`` (the paper, and its released code arvijj/hfpl): C independent binary
  problems, p_c = sigmoid(z_c);
- ``multinomial``: this project's own stand-in for the softmax-style (mutually exclusive)
  posterior that the paper replaces: p = softmax over the classes (plus a constant zero
  background logit when the dataset has a background class). The paper states
  "binomial beats multinomial" against earlier methods' softmax posteriors; the released
  code has no multinomial switch, so this option is our closest construction to measure
  that claim with everything else held equal, not a reimplementation of a published loss.

Importance sampling (the paper's section 3.1; ``train_cam_voc.py`` of the released code):
for every image b and class c, K positions x_1..x_K are drawn with replacement with
probability proportional to p_c(x) + 1e-5 (detached); each sampled prediction is scored
against the image label y_c by the binary cross-entropy and the scores are averaged,

    L_IS = mean_{b, c, k} BCE(p_{b,c}(x_k), y_{b,c}),

which for the binomial posterior is exactly the reference's multi-label soft-margin loss on
the sampled logits z_c(x_k). Every class is sampled, present or absent. The classifier loss
mixes it with the pooled loss: (1 - w) L_GAP + w L_IS (reference w = 0.2, K = 10).

Feature similarity loss (section 3.2; ``tool/probutils.py`` of the released code): for
pixel pairs (i, j) of the feature grid,

    d_x = ||c_i - c_j||_1 / 3, clipped to [0, 1]     (RGB colours in [0, 1])
    s   = tanh(mu + logit(d_x))                      (< 0 for similar, > 0 for distinct colours)
    d_y = 0.5 ||y_i - y_j||^2                        (y: the class maps below, C + 1 channels)
    g   = exp(-|i - j|^2 / (2 sigma^2)) / (2 pi sigma_f^2)
    L_FS = -(1 / (B h w)) sum_b sum_{i, j} g_ij d_y s_ij,

over ordered pairs (both (i, j) and (j, i)), mu = 2.5.

*Scale.* The reference's sigma = 5 is in feature pixels of a stride-8 network on 448 px
crops (a 56 x 56 grid), i.e. 40 image pixels. Here sigma (and the window radius) are in
*image* pixels, |i - j| is measured in image pixels, and the loss converts them with the
network's actual stride s = image size / feature grid size (per axis):
sigma_f = sigma / s, so that the normaliser is the reference's 1 / (2 pi sigma_f^2) and a
network of stride 8 on the reference's crops computes the reference's loss. A stride-16 or
stride-4 network then looks at the same neighbourhood of the image (default 40 px), and the
loss keeps its size: the Gaussian sums to about 1 over the grid whatever the stride.

*Class maps y* (``class_maps``), as in ``train_cam_voc.py`` of the released code: the
max-normalised class maps of the logits (SEAM's ``max_norm``),

    r_c = ReLU(z_c),  y_c = ReLU(r_c - min_x r_c - 1e-5) / (max_x r_c - min_x r_c + 1e-5),

(min and max over the positions of one image, gradients through them as well), times the
image's labels (absent classes are 0), and a first channel

    y_0 = 1 - max_c y_c.

On PASCAL VOC y_0 is the background map: without it an object's map would only be compared
with itself, and a class-to-background change of prediction would count half of a
class-to-class change (0.5 instead of 1 for one-hot maps); with it every change of
(hard) prediction costs the same, and an object map that spreads across a colour edge onto
the surrounding road or grass loses the reward of that contrast in its own channel and in
the background's.

*Datasets without a background class* (MSRC-21: every pixel is one of the classes):
``similarity_no_class: always`` (the default) keeps the same channel y_0 = 1 - max_c y_c,
read as "no present class is confident here", so that the loss is the same function of the
maps whatever the dataset and every change of hard prediction costs 1, a class fading
into nothing at a colour edge included. ``with_background`` leaves y_0 out where the
dataset has no background class: the present classes' maps alone. Measured on MSRC-21
(seed 0, binomial, train-split CAMs; docs/benchmarks.md): 44.29 with y_0, 52.71 without,
61.60 without the loss. Either way the binomial loss lets the ground take the objects on
it (with y_0: grass takes 42 % of the cows' pixels, road 34 % of the cars').

For the ``multinomial`` posterior the maps are the present classes' probabilities (not
normalised: they are probabilities already) and y_0 = 1 - sum_c y_c, the posterior mass
outside the present classes (with a background class: the background's probability plus
that of the absent classes), the same "none of the present classes" channel.

*Colours.* The image is reduced to the feature grid by area-weighted (antialiased) bilinear
resampling; the reference samples it with plain bilinear interpolation (align_corners),
which at stride 8 reads about one image pixel per cell. This is the one deliberate
difference: averaged colours are the colour of the cell the prediction stands for.

*Window.* The reference forms all (hw)^2 pairs; :func:`similarity_loss` sums only the pairs
within ``radius`` image pixels (3 sigma by default: the Gaussian there is 1 % of its peak),
offset by offset, without autograd: it accumulates the loss and its gradient with respect
to the maps, 2 sum_j g_ij s_ij (y_i - y_j), in buffers of the maps' size, so its memory is
O(B C h w) whatever the window. :func:`similarity_loss_all_pairs` is the reference's
all-pairs form (autograd through every pair), for the tests and the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    ``similarity_weight`` multiplies L_FS; ``similarity_sigma`` and ``similarity_radius``
    are in image pixels (radius 0: 3 sigma); ``background``: whether the multinomial
    posterior has a background logit (the dataset has a background class); ``no_class``:
    whether the similarity loss's maps have the channel y_0 (:func:`class_maps`)."""

    posterior: str = "binomial"
    sampling_weight: float = 0.0
    samples: int = 10
    similarity_weight: float = 0.0
    similarity_mu: float = 2.5
    similarity_sigma: float = 40.0
    similarity_radius: float = 0.0
    background: bool = True
    no_class: bool = True

    def __post_init__(self) -> None:
        if self.posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, not {self.posterior!r}")
        if not 0.0 <= self.sampling_weight <= 1.0:
            raise ValueError(f"sampling_weight must lie in [0, 1], not {self.sampling_weight}")
        if self.similarity_sigma <= 0 or self.similarity_radius < 0:
            raise ValueError(
                f"similarity_sigma must be above 0 and similarity_radius at least 0, not "
                f"{self.similarity_sigma} and {self.similarity_radius}"
            )

    @classmethod
    def of(cls, params: object, background: bool) -> AddOn:
        """The add-on of a classifier's settings (:class:`wsss.core.settings.ClassifierParams`);
        ``background``: whether the dataset has a background class."""
        names = [f.name for f in fields(cls) if f.name not in ("background", "no_class")]
        no_class = params.similarity_no_class == "always" or background
        return cls(
            **{name: getattr(params, name) for name in names},
            background=background,
            no_class=no_class,
        )

    @property
    def active(self) -> bool:
        """Whether the add-on changes the plain GAP loss at all."""
        return self.sampling_weight > 0 or self.similarity_weight > 0

    @property
    def radius(self) -> float:
        """The similarity window's radius in image pixels."""
        return self.similarity_radius or 3.0 * self.similarity_sigma


def log_probabilities(logits: Tensor, posterior: str, background: bool) -> tuple[Tensor, Tensor]:
    """log p and log(1 - p) of every class, [B, C, ...] each, from logits [B, C, ...].

    binomial: p = sigmoid(z); multinomial (this project's stand-in for a softmax-style
    posterior): p = softmax over the classes (and a zero background logit first when
    ``background``)."""
    if posterior == "binomial":
        return F.logsigmoid(logits), F.logsigmoid(-logits)
    if background:
        logits = torch.cat([torch.zeros_like(logits[:, :1]), logits], 1)
    log_p = torch.log_softmax(logits, 1)[:, int(background) :]
    log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - EPS))
    return log_p, log_not_p


def sample_positions(probs: Tensor, samples: int) -> Tensor:
    """Positions drawn with replacement, probability proportional to ``probs`` + 1e-5.

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


def max_normalised(logits: Tensor) -> Tensor:
    """Each map of ReLU(z) rescaled to [0, 1] over its positions (SEAM's ``max_norm``):
    ReLU(r - min r - 1e-5) / (max r - min r + 1e-5), r = ReLU(z); [B, C, h, w] -> same."""
    r = F.relu(logits)
    top = r.amax((2, 3), keepdim=True)
    bottom = r.amin((2, 3), keepdim=True)
    return F.relu(r - bottom - EPS) / (top - bottom + EPS)


def class_maps(logits: Tensor, targets: Tensor, addon: AddOn) -> Tensor:
    """The predictions y of L_FS: [B, C, h, w] logits, [B, C] labels -> [B, 1 + C, h, w]
    ([B, C, h, w] without ``addon.no_class``).

    Channel 0 is "none of the present classes" (the background on a dataset that has one),
    channels 1.. the classes, zero for the absent ones. binomial (the reference): the
    max-normalised maps and y_0 = 1 - max_c y_c; multinomial: the posterior's probabilities
    and y_0 = 1 - sum_c y_c (see the module's docstring)."""
    present = targets[:, :, None, None].to(logits.dtype)
    if addon.posterior == "binomial":
        maps = max_normalised(logits) * present
        none = 1.0 - maps.amax(1, keepdim=True)
    else:
        log_p, _ = log_probabilities(logits, addon.posterior, addon.background)
        maps = log_p.exp() * present
        none = 1.0 - maps.sum(1, keepdim=True)
    return torch.cat([none, maps], 1) if addon.no_class else maps


def grid_stride(image_size: Sequence[int], grid_size: Sequence[int]) -> tuple[float, float]:
    """The network's stride per axis, image size / feature grid size (rows, columns)."""
    return image_size[0] / grid_size[0], image_size[1] / grid_size[1]


def colour_grid(images: Tensor, size: tuple[int, int]) -> Tensor:
    """RGB images in [0, 255] [B, 3, H, W] -> colours in [0, 1] on the feature grid
    [B, 3, h, w] (area-weighted)."""
    small = F.interpolate(images.float() / 255.0, size, mode="bilinear", antialias=True)
    return small.clamp(0.0, 1.0)


def colour_similarity(distance: Tensor, mu: float) -> Tensor:
    """s = tanh(mu + logit(d_x)) for colour distances d_x in [0, 1]."""
    d = distance.clamp(0.0, 1.0)
    return torch.tanh(mu + torch.log((d + EPS) / (1 - d + EPS)))


def _pair(stride: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(stride, (int, float)):
        return float(stride), float(stride)
    sy, sx = stride
    return float(sy), float(sx)


def window(
    sigma: float, radius: float, stride: float | Sequence[float]
) -> list[tuple[int, int, float]]:
    """Half of the window's offsets with their Gaussian weights: (dy, dx, g) in feature
    pixels with 0 < |(dy s_y, dx s_x)| <= radius (image pixels), one of each pair
    +-(dy, dx), which contribute equally to the loss. g = exp(-d^2 / (2 sigma^2)) /
    (2 pi sigma_fy sigma_fx) with d in image pixels and sigma_f = sigma / stride."""
    sy, sx = _pair(stride)
    norm = 2 * math.pi * (sigma / sy) * (sigma / sx)
    out = []
    for dy in range(0, int(radius // sy) + 1):
        for dx in range(-int(radius // sx), int(radius // sx) + 1):
            d2 = (dy * sy) ** 2 + (dx * sx) ** 2
            if (dy > 0 or dx > 0) and d2 <= radius * radius:
                out.append((dy, dx, math.exp(-d2 / (2 * sigma * sigma)) / norm))
    return out


def similarity_loss(
    colours: Tensor,
    maps: Tensor,
    mu: float = 2.5,
    sigma: float = 40.0,
    radius: float = 0.0,
    *,
    stride: float | Sequence[float],
) -> Tensor:
    """L_FS over the pairs at most ``radius`` image pixels apart (0: 3 sigma).

    colours [B, 3, h, w] in [0, 1], maps y [B, C, h, w] -> scalar; ``sigma`` in image
    pixels; ``stride``: image pixels per feature pixel (a number, or rows and columns).
    The pairs are visited without autograd; the loss's gradient with respect to the maps,
    -(2 / (B h w)) sum_j g_ij s_ij (y_i - y_j), is accumulated alongside and attached to
    the result, so the memory is O(B C h w) whatever the window."""
    b, _, h, w = maps.shape
    radius = radius or 3.0 * sigma
    maps = maps.float()
    colours = colours.float()
    with torch.no_grad():
        y = maps.detach()
        grad = torch.zeros_like(y)  # sum_j 2 w_ij (y_i - y_j)
        total = y.new_zeros((), dtype=torch.float64)  # sum over ordered pairs of w d_y
        for dy, dx, g in window(sigma, radius, stride):
            if dy >= h or abs(dx) >= w:
                continue
            # pairs (i, j = i + (dy, dx)): i over the rows / columns where j stays inside
            xs, xe = max(0, -dx), w - max(0, dx)
            a = (slice(None), slice(None), slice(0, h - dy), slice(xs, xe))
            j = (slice(None), slice(None), slice(dy, h), slice(xs + dx, xe + dx))
            weight = g * colour_similarity((colours[a] - colours[j]).abs().sum(1) / 3.0, mu)
            diff = y[a] - y[j]
            # the ordered pairs (i, j) and (j, i): 2 x 0.5 ||y_i - y_j||^2
            total += (weight * (diff * diff).sum(1)).sum().double()
            step = 2.0 * weight[:, None] * diff
            grad[a] += step
            grad[j] -= step
        scale = -1.0 / (b * h * w)
    # value: scale * total; gradient with respect to the maps: scale * grad
    attached = (maps * grad).sum()
    return scale * (total.float() + attached - attached.detach())


def similarity_loss_all_pairs(
    colours: Tensor,
    maps: Tensor,
    mu: float = 2.5,
    sigma: float = 40.0,
    radius: float | None = None,
    *,
    stride: float | Sequence[float],
) -> Tensor:
    """The reference's all-pairs L_FS (memory O(B (hw)^2)); with ``radius`` (image
    pixels), only the pairs at most that far apart count. Same inputs as
    :func:`similarity_loss`."""
    b, c, h, w = maps.shape
    sy, sx = _pair(stride)
    x = colours.float().flatten(2).transpose(1, 2)  # [B, hw, 3]
    y = maps.float().flatten(2).transpose(1, 2)  # [B, hw, C]
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float32) * sy,
        torch.arange(w, dtype=torch.float32) * sx,
        indexing="ij",
    )
    pos = torch.stack([rows.flatten(), cols.flatten()], 1).to(maps.device)
    dist = torch.cdist(pos, pos)  # [hw, hw], image pixels
    g = torch.exp(-0.5 * (dist / sigma) ** 2) / (2 * math.pi * (sigma / sy) * (sigma / sx))
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
    :func:`classifier_loss`. The similarity loss's sigma and radius (image pixels) are
    converted by the stride images.shape / logits.shape. Returns the loss and its terms
    (unweighted) by name."""
    logits = logits.float()
    targets = targets.float()
    terms: dict[str, Tensor] = {name: pooled}
    loss = (1.0 - addon.sampling_weight) * pooled
    if addon.sampling_weight > 0:
        terms["sampling"] = sampling_loss(logits, targets, addon)
        loss = loss + addon.sampling_weight * terms["sampling"]
    if addon.similarity_weight > 0:
        grid = tuple(logits.shape[-2:])
        colours = colour_grid(images, grid)
        maps = class_maps(logits, targets, addon)
        terms["similarity"] = similarity_loss(
            colours,
            maps,
            addon.similarity_mu,
            addon.similarity_sigma,
            addon.radius,
            stride=grid_stride(images.shape[-2:], grid),
        )
        loss = loss + addon.similarity_weight * terms["similarity"]
    return loss, terms

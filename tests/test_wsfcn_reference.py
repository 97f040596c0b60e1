"""WS-FCN's modules against small re-derivations of the released code's equations, written
here from the equations (reference.md section 4), on fixed inputs: the flexible context
aggregation, the flow alignment at initialisation, PAMR, the val inference with its class
filter, and the crops that never pad."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.datasets import PAD_RGB, Augment, resized_crop_box
from wsss.methods.inference import segment_single_stage
from wsss.methods.pamr import pamr
from wsss.models.backbones import build_backbone
from wsss.models.ngwp import single_stage_output
from wsss.models.wsfcn import (
    FLOW_UNIT,
    WSFCN,
    FlexibleContext,
    FlowAlignment,
    flow_warp,
    trimmed_conv,
)


def _padded_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The plain convolution with the full 'same' padding d (k - 1) / 2 per axis."""
    kh, kw = conv.weight.shape[-2:]
    d = conv.dilation[0]
    return F.conv2d(x, conv.weight, None, 1, (d * (kh // 2), d * (kw // 2)), d)


@pytest.mark.parametrize(
    "kernel, dilation, side", [(7, 36, 16), (5, 24, 10), (3, 12, 30), (7, 2, 9)]
)
def test_trimmed_convolution_equals_the_padded_one(kernel: int, dilation: int, side: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, side, side + 3)
    for size in ((kernel, 1), (1, kernel)):
        conv = nn.Conv2d(4, 5, size, dilation=dilation, bias=False)
        assert torch.allclose(trimmed_conv(x, conv), _padded_conv(x, conv), atol=1e-5)


def test_flexible_context_aggregation_by_its_equations() -> None:
    torch.manual_seed(0)
    module = FlexibleContext(6, 4).eval()
    for bn in (module.project[1], module.pool[1][1]):  # non-trivial frozen statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 9, 11)

    def bn(t: torch.Tensor, layer: nn.BatchNorm2d) -> torch.Tensor:
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return (t - layer.running_mean[:, None, None]) * scale[:, None, None] + layer.bias[
            :, None, None
        ]

    mlp = module.channel_attention.mlp
    w1, w2 = mlp[0].weight[:, :, 0, 0], mlp[2].weight[:, :, 0, 0]

    def attention(t: torch.Tensor) -> torch.Tensor:  # sigmoid(W2 relu(W1 avg) + W2 relu(W1 max))
        avg, mx = t.mean((2, 3)), t.amax((2, 3))
        a = torch.relu(avg @ w1.T) @ w2.T + torch.relu(mx @ w1.T) @ w2.T
        return torch.sigmoid(a)[:, :, None, None]

    parts = []
    for branch, (k, d) in zip(module.branches, [(1, 1), (3, 12), (5, 24), (7, 36)]):
        assert branch.column_row[0].weight.shape[-2:] == (k, 1)
        assert branch.column_row[0].dilation == (d, d)
        y = _padded_conv(_padded_conv(x, branch.column_row[0]), branch.column_row[1])
        y = y + _padded_conv(_padded_conv(x, branch.row_column[0]), branch.row_column[1])
        parts.append(y * attention(y))
    pooled = x.mean((2, 3), keepdim=True)
    pooled = torch.relu(bn(F.conv2d(pooled, module.pool[1][0].weight), module.pool[1][1]))
    parts.append(pooled.expand(-1, -1, 9, 11))
    y = bn(F.conv2d(torch.cat(parts, 1), module.project[0].weight), module.project[1])
    sa = torch.sigmoid(
        F.conv2d(
            torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1),
            module.attention.conv.weight,
            padding=1,
        )
    )
    expected = y + sa * y
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=1e-5)


def test_the_context_batch_norm_statistics_stay_frozen_in_training() -> None:
    torch.manual_seed(0)
    model = WSFCN(build_backbone("lite0", 16, weights=None), 3, backbone_name="lite0", width=16)
    model.train()
    before = [
        bn.running_mean.clone() for bn in model.context.modules() if isinstance(bn, nn.BatchNorm2d)
    ]
    model(torch.rand(2, 3, 64, 64) * 255)
    after = [bn.running_mean for bn in model.context.modules() if isinstance(bn, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert model.decoder.shallow[0][1].training  # the decoder's batch norms do train


def test_flow_unit_is_half_a_pixel() -> None:
    features = torch.arange(40.0).view(1, 1, 4, 10)
    flow = torch.zeros(1, 2, 4, 10)
    flow[:, 0] = 2.0  # two units: one pixel to the right
    shifted = flow_warp(features, flow, FLOW_UNIT)
    assert torch.allclose(shifted[..., :-1], features[..., 1:], atol=1e-5)


def test_the_initial_flow_moves_features_by_about_a_pixel() -> None:
    torch.manual_seed(0)
    align = FlowAlignment(24, 64)
    shallow = torch.randn(2, 24, 32, 32).relu()
    deep = torch.randn(2, 64, 8, 8).relu() * 3
    flow = align.flow_field(shallow, deep) * FLOW_UNIT  # pixels
    displacement = flow.norm(dim=1).mean().item()
    assert 0.2 < displacement < 2.0
    # He-normal projections and a flow of one pixel per unit move several times further.
    for conv in (align.down_deep, align.down_shallow):
        nn.init.kaiming_normal_(conv.weight)
    assert align.flow_field(shallow, deep).norm(dim=1).mean().item() > 3 * displacement


def test_pamr_one_iteration_by_hand() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 4, 5) * 255
    mask = torch.rand(1, 2, 4, 5)
    out = pamr(image, mask, iterations=1, dilations=(1,))

    def at(t: torch.Tensor, y: int, x: int) -> torch.Tensor:  # replicated borders
        return t[0, :, min(max(y, 0), 3), min(max(x, 0), 4)]

    expected = torch.zeros_like(mask)
    offsets = [(dy, dx) for dy, dx in itertools.product((-1, 0, 1), repeat=2)]
    for y, x in itertools.product(range(4), range(5)):
        window = torch.stack([at(image, y + dy, x + dx) for dy, dx in offsets])  # [9, 3]
        sigma = window.std(0)  # per colour channel, unbiased, centre counted once
        kernels, values = [], []
        for dy, dx in offsets:
            if (dy, dx) == (0, 0):
                continue
            diff = (at(image, y + dy, x + dx) - image[0, :, y, x]).abs()
            kernels.append((-diff / (1e-8 + 0.1 * sigma)).mean())
            values.append(at(mask, y + dy, x + dx))
        weights = torch.softmax(torch.stack(kernels), 0)
        expected[0, :, y, x] = (weights[:, None] * torch.stack(values)).sum(0)
    assert torch.allclose(out, expected, atol=1e-5)


class _Fixed(nn.Module):
    """A single-stage network whose class logits are fixed maps (mirrored for a mirrored
    input), for the inference tests."""

    def __init__(self, logits: torch.Tensor, background: bool):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)
        self.background = background

    def forward(self, images: torch.Tensor):
        logits = F.interpolate(self.logits, images.shape[-2:], mode="nearest")
        mirrored = images[:, 0, 0, 0] < images[:, 0, 0, -1]  # the bright column on the right
        logits = torch.where(mirrored[:, None, None, None], logits.flip(-1), logits)
        return single_stage_output(logits.expand(len(images), -1, -1, -1), self.background)


def test_val_inference_averages_masks_drops_weak_classes_and_powers_the_background() -> None:
    logits = torch.full((1, 2, 4, 4), -8.0)
    logits[0, 0, :, :2] = 6.0  # class 0 strong on the left half
    logits[0, 1, :, 3] = 0.5  # class 1 weak, slightly above the background on one column
    model = _Fixed(logits, background=True)
    image = torch.zeros(3, 4, 4)
    image[0, :, 0] = 1.0  # left column bright: the mirror is recognisable
    out = model(image[None])
    scores = torch.sigmoid(out.scores)[0]
    assert scores[1] < scores[0]
    cut = float(scores.mean())
    probs = segment_single_stage(model, image, [1.0], flip=False, score_cut=cut, bg_power=3.0)
    # By hand: masks = softmax([1, z0, z1]); class 1 dropped; background cubed; normalised.
    masks = torch.softmax(torch.cat([torch.ones(1, 1, 4, 4), logits], 1), 1)[0]
    masks[2] = 0.0
    masks[0] = masks[0] ** 3
    expected = masks / masks.sum(0, keepdim=True)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert probs[2].eq(0).all()
    # score_cut 0 keeps class 1, which then takes its column from the (cubed) background.
    kept = segment_single_stage(model, image, [1.0], flip=False, score_cut=0.0, bg_power=3.0)
    assert kept.argmax(0)[:, 3].eq(2).all()


def test_flipped_masks_are_averaged_after_the_softmax() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, :, 0] = 4.0
    model = _Fixed(logits, background=False)
    image = torch.zeros(3, 2, 2)
    image[0, :, 0] = 1.0
    probs = segment_single_stage(model, image, [1.0], flip=True, score_cut=0.0)
    # The fixed network mirrors its maps for the mirrored input: both passes agree, so the
    # average of the two softmaxes is the softmax itself (a sum of logits would sharpen it).
    single = torch.softmax(logits, 1)[0]
    assert torch.allclose(probs, single, atol=1e-5)
    assert not torch.allclose(probs, torch.softmax(2 * logits, 1)[0], atol=1e-3)


def test_without_background_the_best_class_is_always_kept() -> None:
    logits = torch.full((1, 3, 2, 2), -6.0)
    logits[0, 1] = -1.0
    model = _Fixed(logits, background=False)
    assert torch.sigmoid(model(torch.zeros(1, 3, 2, 2)).scores).max() < 0.5
    probs = segment_single_stage(model, torch.zeros(3, 2, 2), [1.0], flip=False, score_cut=0.5)
    assert probs.argmax(0).eq(1).all() and probs[0].eq(0).all() and probs[2].eq(0).all()


def test_resized_crops_never_pad_and_keep_their_share_of_the_image() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = (int(rng.integers(20, 300)), int(rng.integers(20, 300)))
        top, left, h, w = resized_crop_box(size, (0.9, 1.0), rng)
        assert 0 <= top and top + h <= size[0] and 0 <= left and left + w <= size[1]
        assert h * w >= 0.88 * size[0] * size[1]  # 90 % of the area, less rounding
    image = torch.full((3, 50, 200), 7.0)  # a wide image far smaller than the crop
    out, mask = Augment(96, jitter=0.0, crop_area=(0.9, 1.0))(
        image, torch.zeros(50, 200, dtype=torch.long), np.random.default_rng(1)
    )
    assert out.shape == (3, 96, 96) and mask is not None and mask.shape == (96, 96)
    assert torch.allclose(out, torch.full_like(out, 7.0))  # no PAD_RGB anywhere
    assert not any(math.isclose(7.0, v) for v in PAD_RGB)
    padded, _ = Augment(96, scale_range=(1.0, 1.0), jitter=0.0)(
        image, None, np.random.default_rng(1)
    )
    assert (padded != 7.0).any()  # the other networks' crops do pad such an image

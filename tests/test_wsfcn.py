"""WS-FCN (wsss.models.wsfcn) and the single-stage signal it trains with (wsss.methods.single_stage,
wsss.methods.pamr): PAMR, nGWP, pseudo ground truth, balanced cross-entropy, gate, flow warp, and
the whole network's shapes and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.data.manifest import IGNORE
from wsss.methods import single_stage
from wsss.methods.hfpl import AddOn, with_addon
from wsss.methods.pamr import pamr
from wsss.methods.single_stage import (
    balanced_cross_entropy,
    pseudo_ground_truth,
    single_stage_loss,
    wsfcn_loss,
)
from wsss.models.backbones import build_backbone
from wsss.models.ngwp import ngwp, single_stage_output
from wsss.models.wsfcn import ASPP, WSFCN, FlexibleContext, StochasticGate, flow_warp, from_arch

# --------------------------------------------------------------------------- PAMR


def test_pamr_keeps_a_constant_mask_constant() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 12, 12) * 255
    masks = torch.full((2, 3, 12, 12), 0.37)
    assert torch.allclose(pamr(images, masks), masks, atol=1e-5)


def _left_mask() -> torch.Tensor:
    mask = torch.zeros(1, 1, 16, 32)
    mask[..., :6] = 1.0
    return mask


def test_pamr_stops_at_a_colour_edge_and_spreads_within_a_region() -> None:
    images = torch.zeros(1, 3, 16, 32)
    images[..., 16:] = 255.0  # left half black, right half white
    refined = pamr(images, _left_mask())[0, 0]
    assert refined[:, 16:].max() < 1e-6  # nothing crosses into the white half
    assert refined[:, 6:16].min() > 0.5  # the mask fills the rest of the black half
    # Without the edge, the same mask reaches the right half.
    flat = pamr(torch.full((1, 3, 16, 32), 128.0), _left_mask())[0, 0]
    assert flat[:, 16:].mean() > 0.1


def test_pamr_resizes_the_images_to_the_masks() -> None:
    images = torch.zeros(1, 3, 64, 128)
    images[..., 64:] = 255.0
    refined = pamr(images, _left_mask())
    assert refined.shape == (1, 1, 16, 32)
    assert refined[0, 0, :, 17:].max() < 1e-6


# --------------------------------------------------------------------------- scores


def test_ngwp_of_uniform_masks_is_average_pooling() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 7)
    masks = torch.full_like(logits, 0.4)
    mean = logits.mean((2, 3))
    assert torch.allclose(ngwp(logits, masks, eps=0.0), mean, atol=1e-6)
    # The reference's eps = 1 shrinks it by sum m / (1 + sum m) = 14 / 15.
    assert torch.allclose(ngwp(logits, masks), mean * 14 / 15, atol=1e-6)


def test_focal_penalty_and_scores_by_hand() -> None:
    # One class, logit 2 at every one of 4 positions, no background: m = 1 everywhere.
    out = single_stage_output(torch.full((1, 1, 2, 2), 2.0), background=False)
    assert torch.allclose(out.masks, torch.ones(1, 1, 2, 2))
    # nGWP = 4 * 2 / (1 + 4); focal penalty (1 - 1)^3 log(1.01) = 0.
    assert out.scores.item() == pytest.approx(8 / 5)
    # With the background logit 1: m = sigmoid(1) for the class.
    out = single_stage_output(torch.full((1, 1, 2, 2), 2.0), background=True)
    m = 1 / (1 + math.exp(-1.0))
    expected = 4 * m * 2 / (1 + 4 * m) + (1 - m) ** 3 * math.log(0.01 + m)
    assert out.scores.item() == pytest.approx(expected, rel=1e-5)
    assert out.background and out.mask_logits[0, 0].eq(1.0).all()


# --------------------------------------------------------------------------- pseudo GT


def test_pseudo_ground_truth_with_background() -> None:
    masks = torch.zeros(1, 3, 8, 8)  # background, class 0 (labelled), class 1 (absent)
    masks[0, 0] = 0.9
    masks[0, 0, 2:4, 2:4] = 0.1
    masks[0, 1, 2:4, 2:4] = 0.9  # the peak of class 0
    masks[0, 0, 5, 5], masks[0, 1, 5, 5] = 0.5, 0.5  # below both cuts (0.63, 0.54)
    masks[0, 0, 6, 6], masks[0, 1, 6, 6] = 0.8, 0.6  # above both: ambiguous
    masks[0, 2, 0, :] = 0.95  # the absent class, strongest of all
    target = pseudo_ground_truth(masks, torch.tensor([[1.0, 0.0]]), background=True)[0]
    assert target[2:4, 2:4].eq(1).all()
    assert target[5, 5] == IGNORE and target[6, 6] == IGNORE
    assert target[0, 0] == 0 and target[7, 7] == 0
    assert not (target == 2).any()
    assert (target == 0).sum() == 64 - 4 - 2


def test_pseudo_ground_truth_without_background() -> None:
    masks = torch.zeros(1, 3, 4, 4)
    masks[0, 0, :, :2] = 0.8
    masks[0, 1, :, 2:] = 0.7
    masks[0, 1, 0, 0] = 0.1  # below 0.6 * 0.7
    masks[0, 2] = 1.0  # absent
    masks[0, 0, 3, 3] = 0.15  # a weak peak elsewhere changes nothing
    target = pseudo_ground_truth(masks, torch.tensor([[1.0, 1.0, 0.0]]), background=False)[0]
    assert target[:, :2].eq(0).all() and target[:, 2:].eq(1).all()
    # A class whose peak is under the lowest cut (0.2) never appears.
    weak = torch.zeros(1, 2, 4, 4)
    weak[0, 0], weak[0, 1, 0, 0] = 0.9, 0.15
    target = pseudo_ground_truth(weak, torch.tensor([[1.0, 1.0]]), background=False)[0]
    assert target.eq(0).all()


# --------------------------------------------------------------------------- balanced CE


def test_balanced_cross_entropy_by_hand() -> None:
    logits = torch.zeros(1, 2, 1, 5)  # CE = log 2 at every pixel
    target = torch.tensor([[[0, 0, 0, 1, IGNORE]]])
    labels = torch.tensor([[1.0]])  # one foreground class + background
    loss = balanced_cross_entropy(logits, target, labels, background=True)
    # n = 4, n_0 = 3, n_1 = 1: weights 1/5 and 3/5, mean over the 5 pixels.
    assert loss.item() == pytest.approx((3 * 0.2 + 0.6) * math.log(2) / 5, rel=1e-6)
    # Two classes: weights in the ratio of the inverse frequencies, so each class adds the
    # same in total (3 pixels x 1/5 = 1 pixel x 3/5). Silence one class at a time.
    only_background, only_class = logits.clone(), logits.clone()
    only_background[0, :, 0, 3] = torch.tensor([-30.0, 30.0])
    only_class[0, :, 0, :3] = torch.tensor([30.0, -30.0])[:, None]
    first = balanced_cross_entropy(only_background, target, labels, background=True)
    second = balanced_cross_entropy(only_class, target, labels, background=True)
    assert first.item() == pytest.approx(second.item(), rel=1e-6)
    assert first.item() == pytest.approx(0.6 * math.log(2) / 5, rel=1e-6)
    # An image whose pseudo ground truth lacks a labelled class adds nothing.
    incomplete = target.clone()
    incomplete[0, 0, 3] = 0
    assert balanced_cross_entropy(logits, incomplete, labels, background=True).item() == 0.0


def test_balanced_cross_entropy_weights_each_pixel_by_its_class() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 3)
    target = torch.tensor([[[0, 0, 0, 0, 1, 2]]]).view(1, 2, 3)
    labels = torch.tensor([[1.0, 1.0, 1.0]])
    ce = F.cross_entropy(logits, target, reduction="none").flatten()
    weights = torch.tensor([2 / 7, 2 / 7, 2 / 7, 2 / 7, 5 / 7, 5 / 7])  # n = 6: (6 - n_c) / 7
    expected = (weights * ce).mean()
    loss = balanced_cross_entropy(logits, target, labels, background=False)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# --------------------------------------------------------------------------- gate, warp


def test_gate_extremes_pass_one_input() -> None:
    torch.manual_seed(0)
    deep, shallow = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    for psi, expected in ((0.0, deep), (1.0, shallow)):
        gate = StochasticGate(psi)
        for training in (True, False):
            gate.train(training)
            assert torch.equal(gate(deep, shallow), expected)


def test_gate_mean_is_the_deep_features_in_training() -> None:
    torch.manual_seed(0)
    deep, shallow = torch.full((1, 1, 400, 400), 2.0), torch.full((1, 1, 400, 400), -1.0)
    gate = StochasticGate(0.3)
    mixed = gate(deep, shallow)
    assert mixed.unique().tolist() == pytest.approx([-1.0, (2.0 + 0.3) / 0.7])
    assert (mixed == -1.0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert mixed.mean().item() == pytest.approx(2.0, abs=0.05)
    gate.eval()
    assert torch.allclose(gate(deep, shallow), torch.full_like(deep, 0.7 * 2 - 0.3))


def test_zero_flow_is_the_identity_and_a_unit_flow_shifts() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 3, 6, 9)
    zero = torch.zeros(2, 2, 6, 9)
    assert torch.allclose(flow_warp(features, zero), features, atol=1e-5)
    up = flow_warp(features, torch.zeros(2, 2, 12, 18))
    resized = F.interpolate(features, (12, 18), mode="bilinear", align_corners=True)
    assert torch.allclose(up, resized, atol=1e-5)
    right = zero.clone()
    right[:, 0] = 1.0  # each output pixel reads one pixel to its right
    assert torch.allclose(flow_warp(features, right)[..., :-1], features[..., 1:], atol=1e-5)


# --------------------------------------------------------------------------- network

NUM_CLASSES = 4
LABELS = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])


def _network(**flags: bool) -> WSFCN:
    torch.manual_seed(0)
    backbone = build_backbone("lite0", 16, weights=None)
    return WSFCN(backbone, NUM_CLASSES, backbone_name="lite0", width=32, **flags)


@pytest.mark.parametrize(
    "context, fusion, background",
    [(True, True, True), (False, False, True), (True, False, False), (False, True, False)],
)
def test_network_shapes_and_gradients(context: bool, fusion: bool, background: bool) -> None:
    model = _network(context=context, fusion=fusion, background=background)
    model.train()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    out = model(images)
    channels = NUM_CLASSES + int(background)
    assert out.scores.shape == (2, NUM_CLASSES)
    assert out.class_logits.shape == (2, NUM_CLASSES, 16, 16)
    assert out.mask_logits.shape == out.masks.shape == (2, channels, 16, 16)
    assert out.background == background
    assert torch.allclose(out.masks.sum(1), torch.ones(2, 16, 16), atol=1e-5)
    assert isinstance(model.context, FlexibleContext if context else ASPP)

    loss, terms = single_stage_loss(out, images, LABELS, segmentation_loss=True)
    assert set(terms) == {"classification", "segmentation"}
    loss.backward()
    for module in model.new_modules():
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            assert torch.isfinite(param.grad).all(), name

    model.eval()
    with torch.no_grad():
        first, second = model(images), model(images)
    assert torch.equal(first.masks, second.masks)  # the gate is deterministic in eval


def test_segmentation_term_is_optional_and_trains_the_mask_logits() -> None:
    images = torch.zeros(1, 3, 32, 32)
    images[..., 16:] = 255.0
    logits = torch.full((1, 2, 8, 8), -2.0)
    logits[0, 0, :, :4] = 3.0  # class 0 on the black half, background on the white one
    logits.requires_grad_(True)
    labels = torch.tensor([[1.0, 0.0]])
    out = single_stage_output(logits, background=True)
    loss, terms = single_stage_loss(out, images, labels, segmentation_loss=False)
    assert set(terms) == {"classification"} and loss.item() == terms["classification"].item()
    loss, terms = single_stage_loss(out, images, labels, segmentation_loss=True)
    assert terms["segmentation"].item() > 0
    assert loss.item() == pytest.approx(
        terms["classification"].item()
        + single_stage.MASK_LOSS_WEIGHT * terms["segmentation"].item()
    )
    (grad,) = torch.autograd.grad(terms["segmentation"], logits)
    assert grad.abs().sum() > 0


def test_arch_round_trip() -> None:
    model = _network(context=False, fusion=True, background=False)
    arch = model.arch()
    assert arch["backbone"] == "lite0" and arch["output_stride"] == 16
    assert (arch["context"], arch["fusion"], arch["background"]) == (False, True, False)
    rebuilt = from_arch(arch, NUM_CLASSES)
    assert rebuilt.arch() == arch
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert model.backbone not in model.new_modules()


# --------------------------------------------------------------------------- the training loss


def test_wsfcn_loss_adds_the_hfpl_terms_on_background_shifted_logits() -> None:
    """Without the add-on: the single-stage loss, the mask term recorded as 0 while it is
    off. With the similarity loss: classification + lambda similarity (+ the mask term),
    the similarity computed on the class logits minus the background logit."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32) * 255
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    output = single_stage_output(torch.randn(2, 3, 8, 8), background=True)

    plain, terms = wsfcn_loss(output, images, labels, False, AddOn())
    reference, _ = single_stage_loss(output, images, labels, False)
    assert torch.equal(plain, reference) and terms["segmentation"].item() == 0.0

    addon = AddOn(similarity_weight=0.5, similarity_sigma=8.0, background=True)
    for segmentation in (False, True):
        total, terms = wsfcn_loss(output, images, labels, segmentation, addon)
        _, expected = with_addon(
            terms["classification"], "classification", output.class_logits - 1.0, images,
            labels, addon,
        )  # fmt: skip
        unshifted = with_addon(
            terms["classification"], "classification", output.class_logits, images, labels, addon
        )[1]["similarity"]
        assert torch.allclose(terms["similarity"], expected["similarity"])
        assert not torch.allclose(terms["similarity"], unshifted)
        mask = terms["segmentation"] if segmentation else 0.0
        assert torch.allclose(
            total, terms["classification"] + 0.5 * terms["similarity"] + mask, atol=1e-6
        )

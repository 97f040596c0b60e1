"""The HFPL add-on (wsss.hfpl): importance sampling and the feature similarity loss, with
the binomial and the multinomial posterior, and its use by the CAM training."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wsss import hfpl
from wsss.hfpl import AddOn
from wsss.stages import train_cam

# Upper 0.1 % point of the chi-square distribution with 15 degrees of freedom.
CHI2_15_999 = 37.70


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs / probs.sum() * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_sampling_frequencies_follow_the_map() -> None:
    torch.manual_seed(0)
    probs = torch.sigmoid(torch.randn(1, 1, 16) * 2)
    draws = torch.cat([hfpl.sample_positions(probs, 1000).flatten() for _ in range(50)])
    counts = torch.bincount(draws, minlength=16).double()
    assert chi_square(counts, probs.flatten().double()) < CHI2_15_999
    # The same draws are far from a uniform choice: the test can tell the difference.
    assert chi_square(counts, torch.ones(16, dtype=torch.float64)) > 10 * CHI2_15_999


def test_sampling_gradients_reach_only_the_sampled_positions() -> None:
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    addon = AddOn(sampling_weight=1.0, samples=5)
    torch.manual_seed(7)
    hfpl.sampling_loss(logits, targets, addon).backward()
    torch.manual_seed(7)
    index = hfpl.sample_positions(torch.sigmoid(logits.detach()).flatten(2), 5)
    sampled = torch.zeros(2, 3, 36, dtype=torch.bool)
    sampled.scatter_(2, index, True)
    grad = logits.grad.flatten(2)
    assert (grad[sampled] != 0).all()
    assert (grad[~sampled] == 0).all()
    assert sampled.sum(2).max() <= 5


def test_binomial_sampling_loss_is_the_soft_margin_loss_of_the_samples() -> None:
    logits = torch.randn(2, 4, 5, 5)
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    torch.manual_seed(3)
    loss = hfpl.sampling_loss(logits, targets, AddOn(sampling_weight=1.0, samples=10))
    torch.manual_seed(3)
    index = hfpl.sample_positions(torch.sigmoid(logits).flatten(2), 10)
    picked = logits.flatten(2).gather(2, index)
    per_sample = picked.transpose(1, 2).reshape(-1, 4)  # [B K, C]
    ref = F.multilabel_soft_margin_loss(per_sample, targets.repeat_interleave(10, 0))
    torch.testing.assert_close(loss, ref)


def test_multinomial_posterior_is_a_softmax_with_a_background_logit() -> None:
    logits = torch.randn(2, 3, 4, 4)
    log_p, log_not_p = hfpl.log_probabilities(logits, "multinomial", background=True)
    p = log_p.exp()
    assert (p.sum(1) < 1).all()  # the background takes the rest
    full = torch.softmax(torch.cat([torch.zeros_like(logits[:, :1]), logits], 1), 1)
    torch.testing.assert_close(p, full[:, 1:])
    torch.testing.assert_close(log_not_p.exp(), 1 - p)
    log_p, _ = hfpl.log_probabilities(logits, "multinomial", background=False)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(2, 4, 4))
    log_p, _ = hfpl.log_probabilities(logits, "binomial", background=True)
    torch.testing.assert_close(log_p.exp(), torch.sigmoid(logits))


@pytest.mark.parametrize(("h", "w", "radius"), [(7, 9, 2), (8, 8, 3), (5, 11, 4)])
def test_windowed_similarity_loss_equals_all_pairs_within_the_window(
    h: int, w: int, radius: int
) -> None:
    torch.manual_seed(h * w + radius)
    colours = torch.rand(2, 3, h, w)
    maps = torch.rand(2, 4, h, w)
    windowed = hfpl.similarity_loss(colours, maps, mu=2.5, sigma=2.0, radius=radius)
    dense = hfpl.similarity_loss_all_pairs(colours, maps, mu=2.5, sigma=2.0, radius=radius)
    torch.testing.assert_close(windowed, dense, rtol=1e-5, atol=1e-7)
    # A window larger than the grid holds every pair: the reference's unrestricted loss.
    whole = hfpl.similarity_loss(colours, maps, mu=2.5, sigma=2.0, radius=h + w)
    torch.testing.assert_close(whole, hfpl.similarity_loss_all_pairs(colours, maps, 2.5, 2.0))
    # ... which differs from the windowed loss: the window really drops pairs.
    assert abs(float(whole - windowed)) > 1e-4 * abs(float(whole))


def test_similarity_gradients_agree_with_all_pairs() -> None:
    torch.manual_seed(0)
    colours = torch.rand(1, 3, 6, 6)
    a = torch.rand(1, 2, 6, 6, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    hfpl.similarity_loss(colours, a, sigma=1.5, radius=3).backward()
    hfpl.similarity_loss_all_pairs(colours, b, sigma=1.5, radius=3).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def two_colours(h: int, w: int) -> torch.Tensor:
    """Colours [1, 3, h, w]: the left half red, the right half blue."""
    colours = torch.zeros(1, 3, h, w)
    colours[:, 0, :, : w // 2] = 1.0
    colours[:, 2, :, w // 2 :] = 1.0
    return colours


def test_similarity_gradient_pulls_same_coloured_neighbours_together() -> None:
    """One pixel above its same-coloured neighbours: descending the loss lowers it and
    raises them; pixels of the other colour are not pulled towards it."""
    h, w = 8, 12
    maps = torch.full((1, 1, h, w), 0.5)
    maps[0, 0, 4, 2] = 0.9
    maps.requires_grad_(True)
    hfpl.similarity_loss(two_colours(h, w), maps, mu=2.5, sigma=2.0).backward()
    grad = maps.grad[0, 0]
    assert grad[4, 2] > 0  # the outlier goes down
    assert (grad[3:6, 1:4].flatten()[[0, 1, 2, 3, 5, 6, 7, 8]] < 0).all()  # neighbours go up
    assert (grad[:, w // 2 :] >= 0).all()  # the blue side is not pulled up towards it


def test_similarity_gradient_does_not_pull_across_a_colour_edge() -> None:
    """Predictions that change exactly at the colour edge: the loss pushes the two sides
    apart (never together), and descending it keeps them apart while noise inside each
    colour region is smoothed away."""
    h, w = 8, 12
    colours = two_colours(h, w)
    maps = torch.zeros(1, 1, h, w)
    maps[..., w // 2 :] = 1.0
    maps.requires_grad_(True)
    hfpl.similarity_loss(colours, maps, mu=2.5, sigma=2.0).backward()
    grad = maps.grad[0, 0]
    assert (grad[:, w // 2 - 1] > 0).all() and (grad[:, w // 2] < 0).all()

    torch.manual_seed(1)
    noisy = 0.3 + 0.4 * (torch.arange(w) >= w // 2).float() + 0.2 * torch.rand(1, 1, h, w)
    noisy.requires_grad_(True)

    def spreads(y: torch.Tensor) -> tuple[float, float, float]:
        left, right = y[0, 0, :, : w // 2], y[0, 0, :, w // 2 :]
        return float(left.std()), float(right.std()), abs(float(left.mean() - right.mean()))

    start = spreads(noisy.detach())
    optimizer = torch.optim.SGD([noisy], lr=50.0)
    for _ in range(50):
        optimizer.zero_grad()
        hfpl.similarity_loss(colours, noisy, mu=2.5, sigma=2.0).backward()
        optimizer.step()
        with torch.no_grad():
            noisy.clamp_(0, 1)
    end = spreads(noisy.detach())
    assert end[0] < 0.5 * start[0] and end[1] < 0.5 * start[1]
    assert end[2] >= start[2]


def test_add_on_off_is_the_plain_gap_loss() -> None:
    logits = torch.randn(2, 3, 4, 4)
    images = torch.rand(2, 3, 64, 64) * 255
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    loss, terms = hfpl.classifier_loss(logits, images, targets, AddOn())
    torch.testing.assert_close(loss, F.multilabel_soft_margin_loss(logits.mean((2, 3)), targets))
    assert set(terms) == {"gap"} and not AddOn().active
    torch.manual_seed(0)
    both = AddOn(sampling_weight=0.2, similarity_weight=1.0, posterior="multinomial")
    loss, terms = hfpl.classifier_loss(logits, images, targets, both)
    assert set(terms) == {"gap", "sampling", "similarity"}
    expected = 0.8 * terms["gap"] + 0.2 * terms["sampling"] + terms["similarity"]
    torch.testing.assert_close(loss, expected)


def test_add_on_under_bfloat16_logits_matches_float32() -> None:
    """Under autocast the logit maps come in bfloat16; the losses are computed in float32."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6)
    images = torch.rand(2, 3, 96, 96) * 255
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    addon = AddOn(sampling_weight=0.2, similarity_weight=1.0, similarity_sigma=2.0)
    torch.manual_seed(5)
    low, _ = hfpl.classifier_loss(logits.bfloat16(), images, targets, addon)
    torch.manual_seed(5)
    high, _ = hfpl.classifier_loss(logits.bfloat16().float(), images, targets, addon)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, high)


def test_add_on_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="posterior"):
        AddOn(posterior="softmax")
    with pytest.raises(ValueError, match="sampling_weight"):
        AddOn(sampling_weight=1.5)
    addon = AddOn.of(replace(train_cam.Params(), sampling_weight=0.2, similarity_sigma=2.0), False)
    assert addon == AddOn(sampling_weight=0.2, similarity_sigma=2.0, background=False)
    assert addon.radius == 6


def test_cam_training_with_the_add_on_records_its_terms_and_resumes_exactly(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both techniques train the CAM network on the tiny demo; the per-epoch CSV has each
    loss term; a run that dies in its second epoch and is rerun ends with the weights of
    an uninterrupted run (the sampling draws depend on (seed, step), not on the process)."""
    params = train_cam.Params(
        head_channels=32,
        epochs=2,
        batch_size=8,
        crop_size=64,
        num_workers=0,
        health="warn",
        sampling_weight=0.2,
        similarity_weight=1.0,
        similarity_sigma=1.0,
    )

    def io(name: str) -> train_cam.IO:
        out = tmp_path / name / "model.pt"
        state = out.parent / "state"
        return train_cam.IO(manifest=tiny_manifest, out=out, state_dir=state, device="cpu")

    train_cam.run(io("straight"), params)

    calls = []
    real = hfpl.classifier_loss

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # 24 images, batch 8: the first step of epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hfpl, "classifier_loss", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_cam.run(io("resumed"), params)
    assert not (tmp_path / "resumed/model.pt").exists()
    assert torch.load(tmp_path / "resumed/state/last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(hfpl, "classifier_loss", real)
    train_cam.run(io("resumed"), params)

    with (tmp_path / "straight" / "training.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        # the total is the weighted sum of the terms (per-epoch means)
        total = 0.8 * float(row["loss_gap"]) + 0.2 * float(row["loss_sampling"])
        total += float(row["loss_similarity"])
        assert abs(total - float(row["loss"])) < 1e-4
        assert float(row["loss_similarity"]) != 0
    a = torch.load(tmp_path / "straight/model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed/model.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])

"""The HFPL add-on (wsss.methods.hfpl): importance sampling and the feature similarity loss, with
the binomial and the multinomial posterior, and its use by the CAM training."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wsss.methods import hfpl
from wsss.methods.hfpl import AddOn
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
    # the reference's form: the loss on [B, C, K] sampled logits, the label repeated over K
    as_reference = F.multilabel_soft_margin_loss(picked, targets[:, :, None].expand_as(picked))
    torch.testing.assert_close(loss, as_reference)
    # the draws come from sigmoid + 1e-5: a map that is 0 everywhere is drawn uniformly
    draws = hfpl.sample_positions(torch.zeros(1, 1, 4), 4000).flatten()
    assert torch.bincount(draws, minlength=4).min() > 800


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
    # in feature pixels (stride 1), at stride 8, and with uneven strides (rows, columns)
    for stride in (1.0, 8.0, (8.0, 4.0)):
        scale = stride if isinstance(stride, float) else 8.0
        kw = {"mu": 2.5, "sigma": 2.0 * scale, "radius": radius * scale, "stride": stride}
        windowed = hfpl.similarity_loss(colours, maps, **kw)
        dense = hfpl.similarity_loss_all_pairs(colours, maps, **kw)
        torch.testing.assert_close(windowed, dense, rtol=1e-5, atol=1e-7)
    # A window larger than the grid holds every pair: the reference's unrestricted loss.
    whole = hfpl.similarity_loss(colours, maps, mu=2.5, sigma=2.0, radius=h + w, stride=1)
    everything = hfpl.similarity_loss_all_pairs(colours, maps, 2.5, 2.0, stride=1)
    torch.testing.assert_close(whole, everything, rtol=1e-5, atol=1e-7)
    windowed = hfpl.similarity_loss(colours, maps, mu=2.5, sigma=2.0, radius=radius, stride=1)
    # ... which differs from the windowed loss: the window really drops pairs.
    assert abs(float(whole - windowed)) > 1e-4 * abs(float(whole))


def test_similarity_gradients_agree_with_all_pairs() -> None:
    torch.manual_seed(0)
    colours = torch.rand(1, 3, 6, 6)
    maps = torch.rand(1, 2, 6, 6)
    for sigma, radius, stride in [(1.5, 3.0, 1.0), (12.0, 24.0, (8.0, 4.0))]:
        a = maps.clone().requires_grad_(True)
        b = maps.clone().requires_grad_(True)
        hfpl.similarity_loss(colours, a, sigma=sigma, radius=radius, stride=stride).backward()
        hfpl.similarity_loss_all_pairs(colours, b, 2.5, sigma, radius, stride=stride).backward()
        assert a.grad.abs().max() > 1e-4
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
    hfpl.similarity_loss(two_colours(h, w), maps, mu=2.5, sigma=2.0, stride=1).backward()
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
    hfpl.similarity_loss(colours, maps, mu=2.5, sigma=2.0, stride=1).backward()
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
        hfpl.similarity_loss(colours, noisy, mu=2.5, sigma=2.0, stride=1).backward()
        optimizer.step()
        with torch.no_grad():
            noisy.clamp_(0, 1)
    end = spreads(noisy.detach())
    assert end[0] < 0.5 * start[0] and end[1] < 0.5 * start[1]
    assert end[2] >= start[2]


# ---- the class maps y of the similarity loss, as in the released code --------------------


def loop_class_maps(z: list, labels: list[float]) -> list:
    """y of one image from its logits z [C][h][w], by the equations: r = max(z, 0);
    y_c = max(r - min r - 1e-5, 0) / (max r - min r + 1e-5) * label_c; y_0 = 1 - max_c y_c."""
    maps = []
    for zc, label in zip(z, labels):
        r = [[max(v, 0.0) for v in row] for row in zc]
        top, bottom = max(map(max, r)), min(map(min, r))
        scale = top - bottom + 1e-5
        maps.append([[max(v - bottom - 1e-5, 0.0) / scale * label for v in row] for row in r])
    h, w = len(z[0]), len(z[0][0])
    none = [[1.0 - max(m[i][j] for m in maps) for j in range(w)] for i in range(h)]
    return [none] + maps


def loop_similarity_loss(
    colours: list, maps: list, mu: float, sigma: float, stride: float, radius: float | None
) -> float:
    """L_FS by explicit loops over every ordered pair of pixels of every image: colours
    [B][3][h][w], maps [B][K][h][w]; sigma and radius in image pixels, stride image pixels
    per cell."""
    b, h, w = len(maps), len(maps[0][0]), len(maps[0][0][0])
    sigma_f = sigma / stride
    total = 0.0
    cells = [(i, j) for i in range(h) for j in range(w)]
    for n in range(b):
        for i1, j1 in cells:
            for i2, j2 in cells:
                dist = stride * math.hypot(i1 - i2, j1 - j2)
                if radius is not None and dist > radius:
                    continue
                d_x = sum(abs(colours[n][k][i1][j1] - colours[n][k][i2][j2]) for k in range(3))
                d_x = min(max(d_x / 3.0, 0.0), 1.0)
                s = math.tanh(mu + math.log((d_x + 1e-5) / (1 - d_x + 1e-5)))
                d_y = 0.5 * sum((m[i1][j1] - m[i2][j2]) ** 2 for m in maps[n])
                g = math.exp(-0.5 * (dist / sigma) ** 2) / (2 * math.pi * sigma_f**2)
                total += g * d_y * s
    return -total / (b * h * w)


def test_similarity_loss_matches_an_explicit_pair_loop() -> None:
    """Two classes on 6 x 6 grids (one image with both, one with the second only), the
    background channel, stride 8, sigma 16 image pixels: the windowed and the all-pairs
    loss equal the loop over every pixel pair, with and without a window radius."""
    torch.manual_seed(11)
    logits = torch.randn(2, 2, 6, 6) * 3
    logits[0, 0] = logits[0, 0].abs() + 1  # positive everywhere: its minimum counts
    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    colours = torch.rand(2, 3, 6, 6)
    maps = hfpl.class_maps(logits, targets, AddOn())
    expected = [loop_class_maps(logits[n].tolist(), targets[n].tolist()) for n in range(2)]
    torch.testing.assert_close(maps, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert (maps[1, 1] == 0).all() and maps[0, 1].max() > 0.99  # absent / present class

    for radius in (None, 20.0):
        ref = loop_similarity_loss(colours.tolist(), expected, 2.5, 16.0, 8.0, radius)
        windowed = hfpl.similarity_loss(colours, maps, 2.5, 16.0, radius or 1000.0, stride=8)
        dense = hfpl.similarity_loss_all_pairs(colours, maps, 2.5, 16.0, radius, stride=8)
        assert abs(ref) > 1e-3
        assert float(windowed) == pytest.approx(ref, rel=1e-5)
        assert float(dense) == pytest.approx(ref, rel=1e-5)


def test_class_maps_have_the_none_channel_whatever_the_dataset() -> None:
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 5, 5) * 2
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    maps = hfpl.class_maps(logits, targets, AddOn())
    assert maps.shape == (2, 4, 5, 5)
    assert (maps[:, 1:][targets == 0] == 0).all()
    present = maps[:, 1:][targets == 1]
    assert (present.amin((1, 2)) == 0).all() and (present.amax((1, 2)) > 0.999).all()
    torch.testing.assert_close(maps[:, 0], 1 - maps[:, 1:].amax(1))
    # a dataset without a background class (MSRC-21) has the same "none" channel
    no_background = hfpl.class_maps(logits, targets, AddOn(background=False))
    torch.testing.assert_close(no_background, maps)
    # only the positive logits count, relative to their image's own range
    shifted = hfpl.class_maps(torch.where(logits > 0, 2 * logits, 5 * logits), targets, AddOn())
    torch.testing.assert_close(shifted, maps, rtol=1e-4, atol=1e-5)

    # multinomial: the present classes' probabilities and 1 - their sum
    for background in (True, False):
        multi = hfpl.class_maps(logits, targets, AddOn("multinomial", background=background))
        log_p, _ = hfpl.log_probabilities(logits, "multinomial", background)
        torch.testing.assert_close(multi[:, 1:], log_p.exp() * targets[:, :, None, None])
        torch.testing.assert_close(multi.sum(1), torch.ones(2, 5, 5))
    every = hfpl.class_maps(logits, torch.ones(2, 3), AddOn("multinomial", background=True))
    full = torch.softmax(torch.cat([torch.zeros_like(logits[:, :1]), logits], 1), 1)
    torch.testing.assert_close(every, full)  # with every class present: the whole softmax


def hard_logits(h: int, w: int, left: float, right: float) -> torch.Tensor:
    """Logits [h, w]: ``left`` on the left half, ``right`` on the right half."""
    return torch.where(torch.arange(w) < w // 2, left, right).expand(h, w).clone()


def test_the_none_channel_makes_a_class_to_none_change_cost_a_class_change() -> None:
    """At a colour edge, class A | class B and class A | nothing get the same reward with
    the none channel; without it the second would get half."""
    h, w = 6, 8
    colours = two_colours(h, w)
    a_b = torch.stack([hard_logits(h, w, 5, -5), hard_logits(h, w, -5, 5)])[None]
    a_none = torch.stack([hard_logits(h, w, 5, -5), hard_logits(h, w, -5, -5)])[None]
    both = torch.ones(1, 2)

    def loss(logits: torch.Tensor, channels: slice) -> float:
        maps = hfpl.class_maps(logits, both, AddOn())[:, channels]
        return float(hfpl.similarity_loss(colours, maps, 2.5, 16.0, stride=8))

    assert loss(a_b, slice(None)) < -0.1
    assert loss(a_none, slice(None)) == pytest.approx(loss(a_b, slice(None)), rel=1e-4)
    assert loss(a_none, slice(1, None)) == pytest.approx(0.5 * loss(a_b, slice(1, None)), rel=1e-4)


@pytest.mark.parametrize("background", [True, False])
def test_the_loss_prefers_an_object_map_that_stops_at_the_colour_edge(background: bool) -> None:
    """One present class whose logits are high on both sides of a colour edge (sigmoid above
    0.999 everywhere): one map stops at the edge, the other fades across it. The
    sigmoid maps (what this module used before) can hardly tell them apart; the
    max-normalised maps with the none channel prefer the first, and descending the loss
    lowers the second where it crossed the edge. The same with and without a background
    class."""
    h, w = 8, 12
    colours = two_colours(h, w)
    stops = hard_logits(h, w, 12.0, 8.0)[None, None]
    fades = stops.clone()
    fades[..., w // 2 :] = torch.linspace(11.0, 8.0, w - w // 2)
    fades.requires_grad_(True)
    present = torch.ones(1, 1)
    addon = AddOn(background=background)

    def loss(logits: torch.Tensor) -> torch.Tensor:
        maps = hfpl.class_maps(logits, present, addon)
        assert maps.shape[1] == 2  # the none channel and the class
        return hfpl.similarity_loss(colours, maps, 2.5, 16.0, stride=8)

    def sigmoid_loss(logits: torch.Tensor) -> float:
        return float(hfpl.similarity_loss(colours, torch.sigmoid(logits), 2.5, 16.0, stride=8))

    gap = float(loss(fades.detach())) - float(loss(stops))
    assert gap > 0.02
    assert abs(sigmoid_loss(fades.detach()) - sigmoid_loss(stops)) < 1e-3 * gap
    loss(fades).backward()
    assert (fades.grad[0, 0, :, w // 2] > 0).all()  # the first column past the edge goes down


# ---- sigma and the window radius in image pixels -------------------------------------------


def test_sigma_in_image_pixels_is_divided_by_the_stride() -> None:
    torch.manual_seed(4)
    colours = torch.rand(2, 3, 9, 9)
    maps = torch.rand(2, 3, 9, 9)
    for stride in (4, 8, 16):
        image_px = hfpl.similarity_loss(colours, maps, 2.5, 40.0, stride=stride)
        cells = hfpl.similarity_loss(colours, maps, 2.5, 40.0 / stride, stride=1)
        torch.testing.assert_close(image_px, cells)
    assert hfpl.grid_stride((128, 96), (8, 12)) == (16.0, 8.0)

    # the add-on reads the stride off the crop and the logit maps
    images = torch.rand(2, 3, 128, 128) * 255
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    addon = AddOn(similarity_weight=1.0)
    for grid in (8, 16):
        logits = torch.randn(2, 3, grid, grid)
        _, terms = hfpl.classifier_loss(logits, images, targets, addon)
        y = hfpl.class_maps(logits, targets, addon)
        colours = hfpl.colour_grid(images, (grid, grid))
        stride = 128 / grid
        cells = hfpl.similarity_loss(colours, y, 2.5, 40.0 / stride, 120.0 / stride, stride=1)
        torch.testing.assert_close(terms["similarity"], cells)


def smooth_scene(stride: int, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours and two logit maps of one image of ``size`` px, smooth functions of the
    image position, read at the centres of the cells of a stride-``stride`` grid."""
    t = (torch.arange(size // stride, dtype=torch.float64) + 0.5) * stride / size
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    colours = torch.stack(
        [0.5 + 0.3 * torch.sin(3 * xx + yy), 0.5 + 0.3 * torch.cos(2 * yy), 0.4 + 0.2 * xx * yy]
    )
    logits = torch.stack([6 * torch.sin(4 * xx) + 2 * yy, 5 * torch.cos(3 * yy + xx)])
    return colours[None].float(), logits[None].float()


def test_the_loss_of_an_image_hardly_depends_on_the_stride() -> None:
    """The same image seen by a stride-8 and a stride-16 network: with sigma in image
    pixels the loss is nearly the same; read as feature pixels on both grids, it is not."""
    values, as_cells = [], []
    for stride in (8, 16):
        colours, logits = smooth_scene(stride)
        maps = hfpl.class_maps(logits, torch.ones(1, 2), AddOn())
        values.append(float(hfpl.similarity_loss(colours, maps, 2.5, 40.0, stride=stride)))
        as_cells.append(float(hfpl.similarity_loss(colours, maps, 2.5, 5.0, stride=1)))
    assert values[1] == pytest.approx(values[0], rel=0.05)
    assert abs(as_cells[1] - as_cells[0]) > 0.5 * abs(as_cells[0])


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
    addon = AddOn(sampling_weight=0.2, similarity_weight=1.0, similarity_sigma=32.0)
    torch.manual_seed(5)
    low, terms = hfpl.classifier_loss(logits.bfloat16(), images, targets, addon)
    torch.manual_seed(5)
    high, _ = hfpl.classifier_loss(logits.bfloat16().float(), images, targets, addon)
    assert low.dtype == torch.float32 and float(terms["similarity"]) != 0
    torch.testing.assert_close(low, high)


def test_add_on_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="posterior"):
        AddOn(posterior="softmax")
    with pytest.raises(ValueError, match="sampling_weight"):
        AddOn(sampling_weight=1.5)
    with pytest.raises(ValueError, match="similarity_sigma"):
        AddOn(similarity_sigma=0.0)
    addon = AddOn.of(replace(train_cam.Params(), sampling_weight=0.2), False)
    assert addon == AddOn(sampling_weight=0.2, background=False)
    assert addon.similarity_sigma == 40.0 and addon.radius == 120.0  # image pixels
    assert AddOn(similarity_radius=50.0).radius == 50.0


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
        similarity_sigma=16.0,  # image pixels: one cell of the 4 x 4 grid of 64 px crops
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


def test_without_the_no_class_channel_the_maps_are_the_present_classes_alone() -> None:
    """``similarity_no_class: with_background`` drops y_0 on a dataset without a background
    class (and keeps it on one that has it); the loss is then that of the classes' maps."""
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 6, 6) * 2
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    keep = hfpl.class_maps(logits, targets, AddOn(background=False))
    drop = hfpl.class_maps(logits, targets, AddOn(background=False, no_class=False))
    torch.testing.assert_close(drop, keep[:, 1:])
    for posterior in ("binomial", "multinomial"):
        maps = hfpl.class_maps(logits, targets, AddOn(posterior, background=False, no_class=False))
        assert maps.shape == (2, 3, 6, 6)

    class Params:  # the settings as the training stage reads them
        posterior, sampling_weight, samples, similarity_weight = "binomial", 0.0, 10, 1.0
        similarity_mu, similarity_sigma, similarity_radius = 2.5, 40.0, 0.0
        similarity_no_class = "with_background"

    assert AddOn.of(Params, background=False).no_class is False
    assert AddOn.of(Params, background=True).no_class is True
    Params.similarity_no_class = "always"
    assert AddOn.of(Params, background=False).no_class is True
    # one class that fills one side of a colour edge, nothing on the other: with y_0 the
    # edge is a change of prediction (reward 1), without it half of one
    h, w = 6, 8
    colours = two_colours(h, w)
    a_none = torch.stack([hard_logits(h, w, 5, -5), hard_logits(h, w, -5, -5)])[None]
    both = torch.ones(1, 2)
    with_y0 = hfpl.similarity_loss(
        colours, hfpl.class_maps(a_none, both, AddOn()), 2.5, 16.0, stride=8
    )
    alone = hfpl.class_maps(a_none, both, AddOn(background=False, no_class=False))
    without = hfpl.similarity_loss(colours, alone, 2.5, 16.0, stride=8)
    assert float(without) == pytest.approx(0.5 * float(with_y0), rel=1e-4)

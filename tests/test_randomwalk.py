"""Random-walk refinement: sparse stencil against the dense reference, and its invariants."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from wsss.methods.randomwalk import dense_random_walk, random_walk, transition_matrix
from wsss.models.affinitynet import neighbour_mask, neighbour_offsets, pairwise_affinity


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run these tiny grids single-threaded: each of the 2^logt sparse products is then not
    charged a thread synchronisation, which dominates on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_features(depth: int, height: int, width: int, seed: int) -> torch.Tensor:
    """[D, h, w]: a smooth random field plus noise, so that affinities spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, depth, 3, 3, generator=g)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)[0]
    return 0.6 * smooth + 0.05 * torch.randn(depth, height, width, generator=g)


def make_cam(classes: int, height: int, width: int, seed: int, background: bool) -> torch.Tensor:
    """[C, h, w] in [0, 1], each class map's maximum 1; with a background map
    (1 - max_c M_c)^16 in front when ``background``."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(classes, height, width, generator=g)
    maps = maps / maps.amax((1, 2), keepdim=True)
    if not background:
        return maps
    return torch.cat([(1 - maps.amax(0, keepdim=True)) ** 16, maps])


@pytest.mark.parametrize("height, width", [(9, 11), (16, 16)])
@pytest.mark.parametrize("channels, background", [(3, False), (4, False), (3, True), (4, True)])
def test_matches_dense_reference(height: int, width: int, channels: int, background: bool) -> None:
    features = make_features(8, height, width, seed=height)
    cam = make_cam(channels - background, height, width, seed=channels, background=background)
    assert cam.shape == (channels, height, width)
    weights = pairwise_affinity(features[None], neighbour_offsets(5))[0][0].pow(8.0)
    assert weights.max() > 0.5 and weights[weights > 0].min() < 0.05  # a spread of weights

    ours = random_walk(cam, features, radius=5, beta=8.0, logt=8)
    dense = dense_random_walk(cam.double(), features.double(), radius=5, beta=8.0, logt=8)
    assert ours.shape == cam.shape and ours.dtype == torch.float32
    assert (ours.double() - dense).abs().max() < 1e-4
    assert (ours - cam).abs().max() > 0.1  # the walk did move the maps


@pytest.mark.parametrize("radius, logt", [(1, 3), (2, 0), (3, 2), (5, 0), (5, 4)])
def test_matches_dense_reference_other_settings(radius: int, logt: int) -> None:
    features = make_features(8, 10, 7, seed=radius)
    cam = make_cam(2, 10, 7, seed=logt, background=True)
    ours = random_walk(cam, features, radius=radius, beta=4.0, logt=logt)
    dense = dense_random_walk(cam.double(), features.double(), radius=radius, beta=4.0, logt=logt)
    assert (ours.double() - dense).abs().max() < 1e-5


def test_offsets_are_the_strict_disc() -> None:
    offsets = neighbour_offsets(5)
    assert (
        len(offsets)
        == sum(1 for dy in range(-5, 6) for dx in range(-5, 6) if 0 < dy * dy + dx * dx < 25)
        == 68
    )
    assert len(set(offsets)) == 68 and (0, 0) not in offsets
    assert all((-dy, -dx) in offsets for dy, dx in offsets)
    assert (0, 4) in offsets and (3, 3) in offsets
    assert (0, 5) not in offsets and (3, 4) not in offsets
    assert offsets == sorted(offsets)
    assert neighbour_offsets(1) == []
    assert neighbour_offsets(2) == [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    assert len(neighbour_offsets(3)) == 24  # the 5 x 5 square: 2^2 + 2^2 < 9


def test_pairwise_affinity_values_and_mask() -> None:
    features = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    offsets = neighbour_offsets(3)
    affinity, valid = pairwise_affinity(features, offsets)
    assert affinity.shape == (2, len(offsets), 6, 7) and valid.shape == (len(offsets), 6, 7)
    assert torch.equal(valid, neighbour_mask(offsets, 6, 7))
    for k, (dy, dx) in enumerate(offsets):
        for y in range(6):
            for x in range(7):
                inside = 0 <= y + dy < 6 and 0 <= x + dx < 7
                assert bool(valid[k, y, x]) == inside
                expected = torch.zeros(2, dtype=torch.float64)
                if inside:
                    diff = features[:, :, y, x] - features[:, :, y + dy, x + dx]
                    expected = torch.exp(-diff.abs().mean(1))
                assert torch.allclose(affinity[:, k, y, x], expected)


def test_pairwise_affinity_is_differentiable() -> None:
    features = torch.randn(1, 4, 8, 8, requires_grad=True)
    affinity, valid = pairwise_affinity(features, neighbour_offsets(5))
    affinity.sum().backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert valid.dtype == torch.bool


def test_corner_uses_only_in_grid_neighbours() -> None:
    height, width, radius, beta = 6, 5, 5, 8.0
    offsets = neighbour_offsets(radius)
    valid = neighbour_mask(offsets, height, width)
    # the top-left pixel sees the quarter disc with dy, dx >= 0
    assert int(valid[:, 0, 0].sum()) == sum(1 for dy, dx in offsets if dy >= 0 and dx >= 0)

    features = make_features(8, height, width, seed=3).double()
    cam = make_cam(3, height, width, seed=3, background=False).double()
    step = random_walk(cam, features, radius=radius, beta=beta, logt=0)
    for y, x in [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1), (2, 2)]:
        total, weighted = 0.0, torch.zeros(3, dtype=torch.float64)
        for dy, dx in offsets + [(0, 0)]:
            if 0 <= y + dy < height and 0 <= x + dx < width:
                w = math.exp(-float((features[:, y, x] - features[:, y + dy, x + dx]).abs().mean()))
                total += w**beta
                weighted += w**beta * cam[:, y + dy, x + dx]
        assert torch.allclose(step[:, y, x], weighted / total)


def test_preserves_constants() -> None:
    features = make_features(8, 12, 9, seed=5)
    ones = torch.ones(2, 12, 9)
    assert (random_walk(ones, features, logt=8) - 1).abs().max() < 1e-4
    rows = transition_matrix(features.double(), radius=5, beta=8.0).to_dense().sum(1)
    assert torch.allclose(rows, torch.ones_like(rows))


def test_logt_zero_is_one_step() -> None:
    features = make_features(8, 8, 8, seed=6).double()
    cam = make_cam(3, 8, 8, seed=6, background=True).double()
    transition = transition_matrix(features).to_dense()
    once = (transition @ cam.reshape(4, -1).t()).t().reshape(cam.shape)
    assert torch.allclose(random_walk(cam, features, logt=0), once)
    twice = (transition @ once.reshape(4, -1).t()).t().reshape(cam.shape)
    assert torch.allclose(random_walk(cam, features, logt=1), twice)


def test_radius_one_is_identity() -> None:
    features = make_features(8, 7, 9, seed=7)
    cam = make_cam(3, 7, 9, seed=7, background=True)
    assert torch.equal(random_walk(cam, features, radius=1, logt=5), cam)


def test_outputs_are_non_negative_and_bounded() -> None:
    features = make_features(8, 16, 16, seed=8)
    cam = make_cam(4, 16, 16, seed=8, background=True)
    out = random_walk(cam, features)
    assert (out >= 0).all()
    assert (out <= cam.amax((1, 2), keepdim=True) + 1e-5).all()  # averages of the inputs


def test_large_grid_runs_sparse() -> None:
    features = make_features(16, 96, 96, seed=9)
    cam = make_cam(3, 96, 96, seed=9, background=True)
    out = random_walk(cam, features)
    assert out.shape == (4, 96, 96) and torch.isfinite(out).all()
    transition = transition_matrix(features)
    assert transition.layout == torch.sparse_csr and transition._nnz() <= 96 * 96 * 69


def test_thread_count_does_not_change_the_result() -> None:
    features = make_features(8, 24, 20, seed=11)
    cam = make_cam(3, 24, 20, seed=11, background=True)
    one = random_walk(cam, features, logt=2)
    torch.set_num_threads(2)
    try:
        two = random_walk(cam, features, logt=2)
    finally:
        torch.set_num_threads(1)
    assert torch.allclose(one, two, rtol=0, atol=1e-6)


def test_rejects_mismatched_grids() -> None:
    with pytest.raises(ValueError):
        random_walk(torch.rand(2, 8, 8), torch.rand(4, 8, 9))
    with pytest.raises(ValueError):
        neighbour_offsets(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    features = make_features(8, 20, 24, seed=10)
    cam = make_cam(3, 20, 24, seed=10, background=True)
    cpu = random_walk(cam, features)
    gpu = random_walk(cam.cuda(), features.cuda())
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() < 1e-4
    dense = dense_random_walk(cam.cuda().double(), features.cuda().double())
    assert (gpu.double() - dense).abs().max() < 1e-4


def test_the_walk_runs_on_one_thread_and_restores_the_setting(monkeypatch) -> None:
    """On the CPU the walk's many small products run on one thread (robust to a loaded
    machine); torch's thread setting is the caller's again afterwards."""
    import wsss.methods.randomwalk as rw

    seen = []
    real = rw.transition_matrix

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(rw, "transition_matrix", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = rw.random_walk(torch.rand(3, 6, 6), torch.rand(4, 6, 6), radius=2, logt=2)
        assert out.shape == (3, 6, 6)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

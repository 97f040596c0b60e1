"""AffinityNet pieces: pair labels, the balanced loss (eq. 10), affinity labels, grid
averaging, the refinement of one image and pseudo-masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.core.settings import CRFParams
from wsss.data.store import ImageMaps
from wsss.methods.label_maps import confident_regions, pseudo_mask
from wsss.methods.randomwalk import grid_average, refine
from wsss.models.affinitynet import AffinityNet, affinity_loss, half_offsets, pair_labels
from wsss.models.backbones import build_backbone
from wsss.stages import affinity_labels, random_walk


def regions(
    image: np.ndarray, maps: np.ndarray, classes: np.ndarray, has_background: bool
) -> np.ndarray:
    """confident_regions with the affinity-labels stage's default settings."""
    p = affinity_labels.Params()
    return confident_regions(
        image, maps, classes, has_background, p.alpha_low, p.alpha_high, p.confidence, p
    )


def walk(
    model: AffinityNet,
    image: torch.Tensor,
    maps: np.ndarray,
    has_background: bool,
    params: random_walk.Params,
) -> tuple[np.ndarray, np.ndarray | None]:
    """refine with the settings of a random-walk stage's Params."""
    return refine(
        model,
        image,
        maps,
        has_background,
        params.radius,
        params.beta,
        params.logt,
        params.alphas,
        params.amp,
    )


def test_half_offsets_cover_each_pair_once() -> None:
    offsets = half_offsets(5)
    assert len(offsets) == 34
    assert not any((-dy, -dx) in offsets for dy, dx in offsets)
    assert all(0 < dy * dy + dx * dx < 25 for dy, dx in offsets)


def test_pair_labels_shift_and_mark_outside() -> None:
    labels = torch.tensor([[[0, 1, 2], [3, 4, 5]]])
    l_i, l_j = pair_labels(labels, [(0, 1), (1, -1)])
    assert l_i[0, 0].tolist() == labels[0].tolist()
    assert l_j[0, 0].tolist() == [[1, 2, 255], [4, 5, 255]]
    assert l_j[0, 1].tolist() == [[255, 3, 4], [255, 255, 255]]


def brute_force_loss(
    features: torch.Tensor, labels: torch.Tensor, radius: int, has_background: bool
) -> float:
    """Eq. 4-10 by enumerating every unordered pair of grid positions."""
    _, _, h, w = features.shape
    subsets: dict[str, list[float]] = {"fg": [], "bg": [], "neg": []}
    for b in range(features.shape[0]):
        cells = [(y, x) for y in range(h) for x in range(w)]
        for i, (yi, xi) in enumerate(cells):
            for yj, xj in cells[i + 1 :]:
                if not 0 < (yi - yj) ** 2 + (xi - xj) ** 2 < radius**2:
                    continue
                li, lj = int(labels[b, yi, xi]), int(labels[b, yj, xj])
                if 255 in (li, lj):
                    continue
                dist = (features[b, :, yi, xi] - features[b, :, yj, xj]).abs().mean()
                a = float(torch.exp(-dist))
                if li == lj:
                    subsets["bg" if has_background and li == 0 else "fg"].append(
                        -math.log(a + 1e-5)
                    )
                else:
                    subsets["neg"].append(-math.log(1 + 1e-5 - a))
    weights = {"fg": 0.25 if has_background else 0.5, "bg": 0.25, "neg": 0.5}
    used = {k: v for k, v in subsets.items() if v}
    return sum(weights[k] * np.mean(v) for k, v in used.items()) / sum(weights[k] for k in used)


@pytest.mark.parametrize("has_background", [True, False])
def test_affinity_loss_matches_brute_force(has_background: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.rand(2, 5, 6, 7, generator=gen)
    labels = torch.randint(0, 3, (2, 6, 7), generator=gen)
    labels[0, :2, :3] = 255
    loss, stats = affinity_loss(features, labels, 3, has_background)
    assert float(loss) == pytest.approx(
        brute_force_loss(features, labels, 3, has_background), rel=1e-5
    )
    assert ("bg" in stats) == has_background and stats["neg_pairs"] > 0


def test_affinity_loss_rewards_separating_features() -> None:
    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :, 3:] = 1
    same = torch.zeros(1, 4, 6, 6)
    apart = same.clone()
    apart[0, :, :, 3:] = 5.0  # class 1 features far from class 0 features
    assert affinity_loss(apart, labels, 5, True)[0] < 0.01 < affinity_loss(same, labels, 5, True)[0]


def two_regions() -> tuple[np.ndarray, np.ndarray]:
    """A 40x40 image: a red square (object) on grey; a CAM peaked inside the square."""
    image = np.full((40, 40, 3), 120, np.uint8)
    image[8:32, 4:20] = (220, 30, 30)
    yy, xx = np.mgrid[:40, :40]
    cam = np.exp(-((yy - 20) ** 2 + (xx - 12) ** 2) / 60.0).astype(np.float32)
    return image, cam[None]


def test_confident_regions_with_background() -> None:
    image, cams = two_regions()
    labels = regions(image, cams, np.array([2]), True)
    assert labels[20, 12] == 3  # class 2 -> value 3 at the peak
    assert labels[20, 35] == 0  # far background is confident background
    assert set(np.unique(labels)) <= {0, 3, 255}
    assert (labels[:, 24:] != 3).all()  # the class does not leak onto the grey side


def test_confident_regions_without_background() -> None:
    image, cams = two_regions()
    single = regions(image, cams, np.array([4]), False)
    assert (single == 4).all()  # one label and no background: the whole image is that class
    yy, xx = np.mgrid[:40, :40]
    broad = np.exp(-((yy - 20) ** 2 + (xx - 12) ** 2) / 300.0).astype(np.float32)[None]
    labels = regions(image, np.concatenate([broad, 1.0 - broad]), np.array([1, 6]), False)
    assert labels[20, 12] == 1 and labels[20, 36] == 6
    assert set(np.unique(labels)) <= {1, 6, 255}


def test_grid_average_counts_only_pixels_inside() -> None:
    maps = torch.arange(130, dtype=torch.float32).view(1, 10, 13)
    grid = grid_average(maps, (2, 2))
    assert grid.shape == (1, 2, 2)
    assert float(grid[0, 1, 1]) == pytest.approx(float(maps[0, 8:10, 8:13].mean()))
    assert float(grid[0, 0, 0]) == pytest.approx(float(maps[0, :8, :8].mean()))


def test_refine_with_radius_one_is_the_grid_average() -> None:
    torch.manual_seed(0)
    model = AffinityNet(build_backbone("lite0", 16, weights=None)).eval()
    image = torch.rand(3, 37, 50) * 255
    maps = np.random.default_rng(0).random((2, 37, 50)).astype(np.float32)
    params = random_walk.Params(radius=1, alphas=(1.0, 16.0), amp=False)
    fg, bg = walk(model, image, maps, True, params)
    assert fg.shape == (2, 5, 7) and bg.shape == (2, 5, 7)
    expected = grid_average(torch.from_numpy(maps), (5, 7)).numpy()
    np.testing.assert_allclose(fg, expected, atol=1e-5)
    bg16 = grid_average(torch.from_numpy((1 - maps.max(0, keepdims=True)) ** 16), (5, 7))
    np.testing.assert_allclose(bg[1:], bg16.numpy(), atol=1e-5)
    fg_walked, none = walk(model, image, maps, False, random_walk.Params(radius=3, logt=2))
    assert none is None and fg_walked.shape == (2, 5, 7)
    assert fg_walked.min() >= maps.min() - 1e-5 and fg_walked.max() <= maps.max() + 1e-5


def test_pseudo_mask_argmax_on_upsampled_maps() -> None:
    maps = np.zeros((2, 2, 2), np.float32)
    maps[0, 0, :] = 0.9  # class 1 wins in the top row
    maps[1, 1, 1] = 0.9  # class 4 wins bottom right
    background = np.full((1, 2, 2), 0.5, np.float32)
    item = ImageMaps("x", maps, np.array([1, 4]), background, (16, 16), 8)
    image = np.zeros((16, 16, 3), np.uint8)
    labels = pseudo_mask(image, item, True, 0, None)
    assert labels.shape == (16, 16)
    assert labels[0, 0] == 2 and labels[15, 15] == 5 and labels[15, 0] == 0
    with_crf = pseudo_mask(image, item, True, 0, CRFParams())
    assert set(np.unique(with_crf)) <= {0, 2, 5}
    single = ImageMaps("y", maps[:1], np.array([3]), None, (16, 16), 8)
    assert (pseudo_mask(image, single, False, None, CRFParams()) == 3).all()

"""The training augmentation: a crop covers the same share of an image whatever its size."""

from __future__ import annotations

import numpy as np
import torch

from wsss.data.datasets import Augment
from wsss.data.manifest import IGNORE


def striped(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose mask numbers 8 vertical bands 0..7 (each 1/8 of the width)."""
    bands = (np.arange(width) * 8 // width).astype(np.int64)
    mask = torch.from_numpy(np.tile(bands, (height, 1)))
    return mask[None].repeat(3, 1, 1).float() * 30, mask


def share_of_bands(augment: Augment, height: int, width: int, seeds: range) -> float:
    """Mean number of the 8 bands a crop contains."""
    image, mask = striped(height, width)
    counts = []
    for seed in seeds:
        _, out = augment(image, mask, np.random.default_rng(seed))
        values = out[out != IGNORE].unique()
        counts.append(len(values))
    return float(np.mean(counts))


def test_crop_covers_the_same_share_of_small_and_large_images() -> None:
    augment = Augment(64, scale_range=(1.0, 1.0), flip=False, jitter=0.0)
    small = share_of_bands(augment, 96, 128, range(20))
    large = share_of_bands(augment, 960, 1280, range(20))
    # The long side becomes 64 px for both: the crop holds every band of either image.
    assert small == large == 8.0


def test_scale_range_is_relative_to_the_crop() -> None:
    augment = Augment(64, scale_range=(2.0, 2.0), flip=False, jitter=0.0)
    image, mask = striped(300, 400)
    out_image, out_mask = augment(image, mask, np.random.default_rng(0))
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (64, 64)
    # Long side 128 px: a 64 px crop holds half the width, 4 or 5 of the 8 bands.
    assert len(out_mask.unique()) in (4, 5)
    assert share_of_bands(augment, 3000, 4000, range(20)) == share_of_bands(
        augment, 300, 400, range(20)
    )

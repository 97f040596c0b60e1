"""Torch datasets over manifest records, and the training augmentation.

Images leave here as float tensors of RGB in [0, 255] [3, H, W]; each model normalises its
own input. Masks are int64 [H, W] with 255 = ignore.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset

from wsss.data.manifest import IGNORE, Record, read_image, read_mask

PAD_RGB = (124.0, 116.0, 104.0)  # ImageNet mean in [0, 255]: padding looks like "nothing"


def to_tensor(image: np.ndarray) -> Tensor:
    """uint8 RGB [H, W, 3] -> float RGB in [0, 255] [3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


@dataclass(frozen=True)
class Augment:
    """Random rescale, horizontal flip, colour jitter and a random square crop.

    The rescale brings the image's long side to ``crop_size`` times a factor drawn from
    ``scale_range`` (as the reference's random long-side resize), so a crop covers the
    same share of every image whatever its size in pixels; ``jitter`` is the brightness / contrast /
    saturation strength (hue gets a third of it); the crop pads with ``PAD_RGB`` (images)
    and 255 (masks) where the rescaled image is smaller than ``crop_size``.

    ``crop_area`` (a, b) instead takes a random resized crop that never pads (the
    single-stage reference's): a rectangle covering a share in [a, b] of the image's area,
    of aspect ratio within [3/4, 4/3] of the image's own (:func:`resized_crop_box`), resized
    to ``crop_size`` x ``crop_size``; ``scale_range`` is then not used.
    """

    crop_size: int
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    jitter: float = 0.3
    crop_area: tuple[float, float] | None = None

    def __call__(
        self, image: Tensor, mask: Tensor | None, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """image [3, H, W] in [0, 255], mask [H, W] or None -> cropped image and mask."""
        if self.crop_area is not None:
            return self._resized_crop(image, mask, rng)
        scale = rng.uniform(*self.scale_range) * self.crop_size / max(image.shape[-2:])
        height, width = image.shape[-2:]
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image = F.interpolate(
            image[None], size, mode="bilinear", align_corners=False, antialias=scale < 1
        )[0]
        if mask is not None:
            mask = F.interpolate(mask[None, None].float(), size, mode="nearest")[0, 0].long()
        image, mask = self._flip_and_jitter(image, mask, rng)
        return self._crop(image, mask, rng)

    def _resized_crop(
        self, image: Tensor, mask: Tensor | None, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor | None]:
        top, left, h, w = resized_crop_box(image.shape[-2:], self.crop_area or (1.0, 1.0), rng)
        size = (self.crop_size, self.crop_size)
        image = image[:, top : top + h, left : left + w]
        image = F.interpolate(
            image[None], size, mode="bilinear", align_corners=False, antialias=h > size[0]
        )[0]
        if mask is not None:
            mask = mask[top : top + h, left : left + w]
            mask = F.interpolate(mask[None, None].float(), size, mode="nearest")[0, 0].long()
        return self._flip_and_jitter(image, mask, rng)

    def _flip_and_jitter(
        self, image: Tensor, mask: Tensor | None, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor | None]:
        if self.flip and rng.random() < 0.5:
            image = image.flip(-1)
            mask = mask.flip(-1) if mask is not None else None
        if self.jitter > 0:
            image = self._jitter(image, rng)
        return image, mask

    def _jitter(self, image: Tensor, rng: np.random.Generator) -> Tensor:
        s = self.jitter
        img = (image / 255.0).clamp(0, 1)
        img = TF.adjust_brightness(img, rng.uniform(1 - s, 1 + s))
        img = TF.adjust_contrast(img, rng.uniform(1 - s, 1 + s))
        img = TF.adjust_saturation(img, rng.uniform(1 - s, 1 + s))
        img = TF.adjust_hue(img, rng.uniform(-s / 3, s / 3))
        return img * 255.0

    def _crop(
        self, image: Tensor, mask: Tensor | None, rng: np.random.Generator
    ) -> tuple[Tensor, Tensor | None]:
        c = self.crop_size
        height, width = image.shape[-2:]
        out = torch.tensor(PAD_RGB).view(3, 1, 1).repeat(1, c, c)
        out_mask = torch.full((c, c), IGNORE, dtype=torch.long) if mask is not None else None
        top = int(rng.integers(0, height - c + 1)) if height > c else 0
        left = int(rng.integers(0, width - c + 1)) if width > c else 0
        dy = int(rng.integers(0, c - height + 1)) if height < c else 0
        dx = int(rng.integers(0, c - width + 1)) if width < c else 0
        h, w = min(c, height), min(c, width)
        out[:, dy : dy + h, dx : dx + w] = image[:, top : top + h, left : left + w]
        if mask is not None and out_mask is not None:
            out_mask[dy : dy + h, dx : dx + w] = mask[top : top + h, left : left + w]
        return out, out_mask


def resized_crop_box(
    size: tuple[int, int],
    area: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random box inside an image of ``size`` (H, W): its
    area a share of the image's drawn from ``area``, its aspect ratio (w / h) the image's
    own times a factor drawn log-uniformly from ``ratio``, one side clipped to the image
    where the factor would make it too long (the area is kept). Relative to the image's
    own aspect, so that a panorama's crop keeps its share of the picture (and of the
    labelled objects) as a square photo's does."""
    height, width = size
    share = rng.uniform(*area)
    aspect = width / height * math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    target = share * height * width
    w = math.sqrt(target * aspect)
    h = target / w
    if w > width:
        w, h = width, target / width
    if h > height:
        w, h = target / height, height
    w, h = min(width, max(1, round(w))), min(height, max(1, round(h)))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w


class EpochSeeded(Dataset):
    """A dataset whose random augmentation depends only on (seed, epoch, index).

    Set ``epoch`` before each epoch; a resumed run then sees the same samples as an
    uninterrupted one, whatever the number of loader workers.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))


class ImageLabels(EpochSeeded):
    """(augmented image [3, c, c], multi-hot labels float [C]) for classification training."""

    def __init__(self, records: Sequence[Record], num_classes: int, augment: Augment, seed: int):
        super().__init__(seed)
        self.records = list(records)
        self.num_classes = num_classes
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rec = self.records[index]
        image, _ = self.augment(to_tensor(read_image(rec.image)), None, self.rng(index))
        target = torch.zeros(self.num_classes)
        target[list(rec.labels)] = 1.0
        return image, target


class ImageMasks(EpochSeeded):
    """(augmented image [3, c, c], label map int64 [c, c]) for segmentation training.

    ``masks`` maps record id -> label-map PNG path (ground truth or pseudo-masks).
    """

    def __init__(
        self, records: Sequence[Record], masks: dict[str, str], augment: Augment, seed: int
    ):
        super().__init__(seed)
        self.records = list(records)
        self.masks = masks
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rec = self.records[index]
        mask = torch.from_numpy(read_mask(self.masks[rec.id]).astype(np.int64))
        image, out_mask = self.augment(to_tensor(read_image(rec.image)), mask, self.rng(index))
        assert out_mask is not None
        return image, out_mask

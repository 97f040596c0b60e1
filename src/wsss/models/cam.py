"""The CAM network (AffinityNet paper, eq. 1): backbone -> 3x3 conv -> GAP -> linear.

``M_c(x, y) = w_c^T f(x, y)`` where ``f`` is the feature map before pooling and ``w_c``
the classifier weight of class ``c``. The classifier is a bias-free 1x1 convolution so
that the same weights give the image logits (after pooling) and the maps (before).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsss.models.backbones import Backbone, build_backbone, normalize


class CAMNet(nn.Module):
    """Multi-label classifier whose classifier weights give class activation maps."""

    def __init__(self, backbone: Backbone, num_classes: int, head_channels: int = 512):
        super().__init__()
        self.backbone = backbone
        width = backbone.channels[-1]
        if head_channels:
            self.head: nn.Module = nn.Sequential(
                nn.Conv2d(width, head_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(head_channels),
                nn.ReLU(inplace=True),
            )
            width = head_channels
        else:
            self.head = nn.Identity()
        self.classifier = nn.Conv2d(width, num_classes, 1, bias=False)

    def new_modules(self) -> list[nn.Module]:
        """Modules trained from scratch (the others come from ImageNet)."""
        return [self.head, self.classifier]

    def features(self, images: Tensor) -> Tensor:
        """RGB images in [0, 255] [B, 3, H, W] -> features f [B, D, H/s, W/s]."""
        return self.head(self.backbone(normalize(images, self.backbone.norm))[-1])

    def forward(self, images: Tensor) -> Tensor:
        """RGB images in [0, 255] [B, 3, H, W] -> class logits [B, C] (GAP then linear)."""
        return self.classifier(self.features(images).mean((2, 3), keepdim=True)).flatten(1)

    def logit_maps(self, images: Tensor) -> Tensor:
        """Class logits at every position, w_c^T f [B, C, H/s, W/s] (their spatial mean is
        :meth:`forward`'s logits)."""
        return self.classifier(self.features(images))

    def cams(self, images: Tensor) -> Tensor:
        """Unnormalised CAMs ReLU(w_c^T f) [B, C, H/s, W/s] for every class."""
        return torch.relu(self.classifier(self.features(images)))


def from_arch(arch: dict, num_labels: int) -> CAMNet:
    """A :class:`CAMNet` of ``num_labels`` classes as ``arch`` describes it (random weights)."""
    backbone = build_backbone(arch["backbone"], arch["output_stride"], weights=None)
    return CAMNet(backbone, num_labels, arch["head_channels"])

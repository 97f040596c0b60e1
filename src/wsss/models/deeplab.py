"""The segmentation network: a backbone with a DeepLab-style head.

Heads (``head``):

- ``psa``: two 3x3 convolutions of dilation ``head_dilation`` (12 in the AffinityNet paper),
  ``head_channels`` (512) wide, then the classes — the reference's ResNet-38 model;
- ``largefov``: DeepLab-LargeFOV, a 3x3 convolution of dilation ``head_dilation`` (1024
  channels), a 1x1 convolution (1024), then a 1x1 classifier, with dropout;
- ``aspp``: torchvision's DeepLabV3 head (atrous spatial pyramid pooling, rates 12/24/36).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from wsss.models.backbones import Backbone, build_backbone, normalize

HEADS = ("psa", "largefov", "aspp")


def make_head(
    kind: str, in_channels: int, num_labels: int, channels: int, dilation: int
) -> nn.Module:
    """The classifier head [B, in, h, w] -> logits [B, num_labels, h, w]."""

    def dilated(cin: int, cout: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False)

    if kind == "psa":
        return nn.Sequential(
            dilated(in_channels, channels),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_labels, 3, padding=dilation, dilation=dilation),
        )
    if kind == "largefov":
        return nn.Sequential(
            dilated(in_channels, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(1024, 1024, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(1024, num_labels, 1),
        )
    if kind == "aspp":
        return DeepLabHead(in_channels, num_labels)
    raise ValueError(f"unknown head '{kind}' (choose from {', '.join(HEADS)})")


class SegNet(nn.Module):
    """RGB images in [0, 255] [B, 3, H, W] -> per-label logits [B, L, H, W]."""

    def __init__(
        self,
        backbone: Backbone,
        num_labels: int,
        head: str = "psa",
        head_channels: int = 512,
        head_dilation: int = 12,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = make_head(head, backbone.channels[-1], num_labels, head_channels, head_dilation)

    def new_modules(self) -> list[nn.Module]:
        return [self.head]

    def forward(self, images: Tensor) -> Tensor:
        logits = self.head(self.backbone(normalize(images, self.backbone.norm))[-1])
        return F.interpolate(logits, images.shape[-2:], mode="bilinear", align_corners=False)


def from_arch(arch: dict, num_labels: int) -> SegNet:
    """A :class:`SegNet` with ``num_labels`` outputs as ``arch`` describes it (random
    weights)."""
    backbone = build_backbone(arch["backbone"], arch["output_stride"], weights=None)
    return SegNet(backbone, num_labels, arch["head"], arch["head_channels"], arch["head_dilation"])

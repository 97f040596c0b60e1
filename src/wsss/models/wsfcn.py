"""WS-FCN (Wang et al., "Coupling global context and local contents for weakly-supervised
semantic segmentation"), the single-stage network, on the baseline of Araslanov & Roth
(CVPR 2020).

Data flow (B images, C foreground classes, stride 4 grid h x w):

1. backbone levels; deep features: the last level (stride ``output_stride``), shallow
   features: level 1 (stride 4);
2. context on the deep features (``width`` channels): parallel 3x3 convolutions of dilation
   1, 6, 12, 18 at stride 16 (doubled at stride 8) and an image-pooling branch, fused by a
   1x1 convolution. ``context=True``: the flexible context aggregation module (FCA), which
   re-weights the fused features by a spatial attention, x + sigmoid(conv3x3([mean_c x,
   max_c x])) * x; ``False``: the baseline's ASPP (first branch 1x1, no attention);
3. decoder to the shallow grid, giving deep and shallow features of ``width`` channels.
   ``fusion=True``: semantically consistent feature fusion (SF2): a flow field predicted
   from both levels warps the deep features onto the shallow grid (:func:`flow_warp`), then
   two branches (shallow, aligned deep) of 3x3 convolutions are multiplied and each refined
   by 3x3 convolutions with a residual; ``False``: the baseline's decoder, the upsampled
   deep features concatenated with a 48-channel projection of the shallow ones (then a 3x3
   convolution) and, as shallow features, the global cue injection (the shallow features
   modulated by a scale and shift read from the deep ones);
4. the stochastic gate mixes the deep and the shallow features (:class:`StochasticGate`);
5. head: two 3x3 convolutions and a 1x1 classifier: class logits [B, C, h, w], turned into
   masks and scores by :func:`wsss.single_stage.single_stage_output` (background logit only
   when ``background``); :func:`wsss.single_stage.single_stage_loss` trains it.

HFPL (:mod:`wsss.hfpl`) reads the classifier's logit maps: these are ``output.class_logits``,
e.g. ``hfpl.sampling_loss(output.class_logits, labels, addon)`` added to the single-stage
loss. HFPL's multinomial posterior puts a zero background logit before the classes; with
``output.class_logits - single_stage.BACKGROUND_LOGIT`` it equals ``output.masks``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.models.backbones import Backbone, build_backbone, normalize
from wsss.single_stage import FOCAL_LAMBDA, FOCAL_P, SingleStageOutput, single_stage_output

SHALLOW_LEVEL = 1  # stride 4 in every backbone
GATE_PSI = 0.3
WIDTH = 256
SKIP_CHANNELS = 48


def kaiming(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with He-normal weights, as the reference initialises its new layers."""
    nn.init.kaiming_normal_(conv.weight)
    return conv


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Convolution (same padding, no bias, He-normal), batch norm, ReLU."""
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        kaiming(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False)),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def context_rates(output_stride: int) -> tuple[int, ...]:
    """Dilations of the context branches: 1, 6, 12, 18 at stride 16, 1, 12, 24, 36 at 8."""
    if output_stride not in (8, 16):
        raise ValueError(f"WS-FCN needs output_stride 8 or 16, not {output_stride}")
    scale = 16 // output_stride
    return (1, 6 * scale, 12 * scale, 18 * scale)


class SpatialAttention(nn.Module):
    """sigmoid(conv3x3([channel mean, channel max])): [B, D, h, w] -> [B, 1, h, w]."""

    def __init__(self, kernel: int = 3):
        super().__init__()
        self.conv = kaiming(nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return torch.sigmoid(self.conv(pooled))


class ContextAggregation(nn.Module):
    """Multi-rate context on the deep features: [B, in, h, w] -> [B, width, h, w].

    ``flexible``: FCA (3x3 branches at every rate, fused features re-weighted by spatial
    attention, x + A(x) x); otherwise ASPP (first branch 1x1, fused features through ReLU).
    The image-pooling branch's batch norm needs training batches of two images or more."""

    def __init__(self, in_channels: int, width: int, output_stride: int, flexible: bool):
        super().__init__()
        rates = context_rates(output_stride)
        self.branches = nn.ModuleList(
            conv_bn_relu(in_channels, width, 3 if flexible or rate > 1 else 1, rate)
            for rate in rates
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, width))
        self.project = nn.Sequential(
            kaiming(nn.Conv2d(width * (len(rates) + 1), width, 1, bias=False)),
            nn.BatchNorm2d(width),
        )
        self.attention = SpatialAttention() if flexible else None
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        x = self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], 1))
        if self.attention is None:
            return self.dropout(F.relu(x))
        return self.dropout(x + self.attention(x) * x)


def flow_warp(features: Tensor, flow: Tensor) -> Tensor:
    """Sample ``features`` [B, D, h, w] on the grid of ``flow`` [B, 2, H, W] (bilinear):
    output pixel p reads the input at p + flow(p), flow (x, y) in output pixels, the two
    grids' corners aligned. Zero flow: bilinear resizing (identity at the same size)."""
    b, _, height, width = flow.shape
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([grid_x, grid_y], -1).expand(b, -1, -1, -1)
    per_pixel = flow.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    grid = base + flow.permute(0, 2, 3, 1) * per_pixel
    return F.grid_sample(features, grid.to(features.dtype), align_corners=True)


class FlowAlignment(nn.Module):
    """Deep features [B, width, h, w] aligned to the shallow grid [B, S, H, W] by a learned
    flow field: flow = conv3x3([1x1(up(deep)), 1x1(shallow)]), out = warp(deep, flow)
    [B, width, H, W]. The flow layer keeps PyTorch's default (small) initial weights."""

    def __init__(self, shallow_channels: int, width: int):
        super().__init__()
        mid = width // 2
        self.down_deep = kaiming(nn.Conv2d(width, mid, 1, bias=False))
        self.down_shallow = kaiming(nn.Conv2d(shallow_channels, mid, 1, bias=False))
        self.flow = nn.Conv2d(2 * mid, 2, 3, padding=1, bias=False)

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        size = shallow.shape[-2:]
        deep_small = F.interpolate(self.down_deep(deep), size, mode="bilinear", align_corners=False)
        flow = self.flow(torch.cat([deep_small, self.down_shallow(shallow)], 1))
        return flow_warp(deep, flow)


class SemanticFusion(nn.Module):
    """SF2: shallow [B, S, H, W] and deep [B, width, h, w] -> (deep, shallow) features
    [B, width, H, W] each.

    a = f2(f1(shallow)), b = g2(g1(align(deep))), fused = a * b;
    shallow' = f4(f3(fused) + f1(shallow)), deep' = g4(g3(fused) + g1(align(deep))),
    every f, g a 3x3 convolution, batch norm and ReLU."""

    def __init__(self, shallow_channels: int, width: int):
        super().__init__()
        self.align = FlowAlignment(shallow_channels, width)
        self.shallow = nn.ModuleList(
            [conv_bn_relu(shallow_channels, width, 3)]
            + [conv_bn_relu(width, width, 3) for _ in range(3)]
        )
        self.deep = nn.ModuleList(conv_bn_relu(width, width, 3) for _ in range(4))

    def forward(self, shallow: Tensor, deep: Tensor) -> tuple[Tensor, Tensor]:
        s1 = self.shallow[0](shallow)
        d1 = self.deep[0](self.align(shallow, deep))
        fused = self.shallow[1](s1) * self.deep[1](d1)
        s = self.shallow[3](self.shallow[2](fused) + s1)
        d = self.deep[3](self.deep[2](fused) + d1)
        return d, s


class GlobalCueInjection(nn.Module):
    """The baseline's shallow features: shallow [B, S, H, W] normalised, modulated by
    (1 + gamma) x + beta with (gamma, beta) the spatial max of a projection of the deep
    features [B, width, h, w] -> [B, width, H, W]."""

    def __init__(self, shallow_channels: int, width: int):
        super().__init__()
        self.deep = conv_bn_relu(width, 2 * width)
        self.skip = nn.Sequential(
            kaiming(nn.Conv2d(shallow_channels, width, 1, bias=False)),
            nn.BatchNorm2d(width, affine=False),
        )
        self.out = conv_bn_relu(width, width)

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        gamma, beta = self.deep(deep).amax((2, 3), keepdim=True).chunk(2, 1)
        return self.out(F.relu(self.skip(shallow) * (1 + gamma) + beta))


class SkipDecoder(nn.Module):
    """The baseline's decoder: shallow [B, S, H, W], deep [B, width, h, w] -> (deep,
    shallow) features [B, width, H, W]: conv3x3([up(deep), 1x1(shallow)]) and
    :class:`GlobalCueInjection`."""

    def __init__(self, shallow_channels: int, width: int):
        super().__init__()
        self.skip = conv_bn_relu(shallow_channels, SKIP_CHANNELS)
        self.merge = conv_bn_relu(width + SKIP_CHANNELS, width, 3)
        self.cue = GlobalCueInjection(shallow_channels, width)

    def forward(self, shallow: Tensor, deep: Tensor) -> tuple[Tensor, Tensor]:
        up = F.interpolate(deep, shallow.shape[-2:], mode="bilinear", align_corners=True)
        return self.merge(torch.cat([up, self.skip(shallow)], 1)), self.cue(shallow, deep)


class StochasticGate(nn.Module):
    """Mixes deep and shallow features [B, D, H, W] (psi: the shallow share).

    Training: each element takes the shallow feature with probability psi, otherwise the
    deep one shifted and scaled to (deep - psi shallow) / (1 - psi), so that the expectation
    is the deep feature; eval: the deterministic (1 - psi) deep + psi shallow. psi = 0
    passes the deep features only, psi = 1 the shallow ones only."""

    def __init__(self, psi: float = GATE_PSI):
        super().__init__()
        if not 0.0 <= psi <= 1.0:
            raise ValueError(f"gate psi must lie in [0, 1], not {psi}")
        self.psi = psi

    def forward(self, deep: Tensor, shallow: Tensor) -> Tensor:
        if not self.training:
            return (1 - self.psi) * deep + self.psi * shallow
        keep = (torch.rand_like(deep) >= self.psi).to(deep.dtype)
        shifted = (deep - self.psi * shallow) / max(1 - self.psi, 1e-8)
        return keep * shifted + (1 - keep) * shallow


class WSFCN(nn.Module):
    """RGB images in [0, 255] [B, 3, H, W] -> :class:`~wsss.single_stage.SingleStageOutput`
    on the stride-4 grid (h = H / 4).

    ``context``: FCA instead of ASPP; ``fusion``: SF2 instead of the baseline's decoder;
    ``background``: a constant background logit before the classes; ``backbone_name``: the
    name :func:`build_backbone` knows ``backbone`` by (for :meth:`arch`)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        backbone_name: str,
        background: bool = True,
        context: bool = True,
        fusion: bool = True,
        width: int = WIDTH,
        gate_psi: float = GATE_PSI,
        focal_lambda: float = FOCAL_LAMBDA,
        focal_p: float = FOCAL_P,
    ):
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.num_classes = num_classes
        self.background = background
        self.use_context = context
        self.use_fusion = fusion
        self.width = width
        self.focal_lambda = focal_lambda
        self.focal_p = focal_p
        shallow = backbone.channels[SHALLOW_LEVEL]
        self.context = ContextAggregation(
            backbone.channels[-1], width, backbone.output_stride, flexible=context
        )
        self.decoder = (SemanticFusion if fusion else SkipDecoder)(shallow, width)
        self.gate = StochasticGate(gate_psi)
        self.head = nn.Sequential(
            conv_bn_relu(width, width, 3),
            nn.Dropout(0.5),
            conv_bn_relu(width, width, 3),
            nn.Dropout(0.1),
            kaiming(nn.Conv2d(width, num_classes, 1)),
        )

    def new_modules(self) -> list[nn.Module]:
        """Modules trained from scratch (the backbone comes from ImageNet)."""
        return [self.context, self.decoder, self.head]

    def arch(self) -> dict:
        """What :func:`from_arch` rebuilds the network from."""
        return {
            "backbone": self.backbone_name,
            "output_stride": self.backbone.output_stride,
            "background": self.background,
            "context": self.use_context,
            "fusion": self.use_fusion,
            "width": self.width,
            "gate_psi": self.gate.psi,
            "focal_lambda": self.focal_lambda,
            "focal_p": self.focal_p,
        }

    def forward(self, images: Tensor) -> SingleStageOutput:
        levels = self.backbone(normalize(images, self.backbone.norm))
        deep, shallow = self.decoder(levels[SHALLOW_LEVEL], self.context(levels[-1]))
        class_logits = self.head(self.gate(deep, shallow))
        return single_stage_output(class_logits, self.background, self.focal_lambda, self.focal_p)


def from_arch(arch: dict, num_labels: int) -> WSFCN:
    """A :class:`WSFCN` as ``arch`` describes it (random weights) whose masks have
    ``num_labels`` channels: the model file's labels, the background first when
    ``arch["background"]`` (so ``num_labels - 1`` foreground classes), else the classes."""
    backbone = build_backbone(arch["backbone"], arch["output_stride"], weights=None)
    return WSFCN(
        backbone,
        num_labels - int(arch["background"]),
        backbone_name=arch["backbone"],
        background=arch["background"],
        context=arch["context"],
        fusion=arch["fusion"],
        width=arch.get("width", WIDTH),
        gate_psi=arch.get("gate_psi", GATE_PSI),
        focal_lambda=arch.get("focal_lambda", FOCAL_LAMBDA),
        focal_p=arch.get("focal_p", FOCAL_P),
    )

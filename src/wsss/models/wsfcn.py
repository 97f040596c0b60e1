"""WS-FCN (Wang et al., "Coupling global context and local contents for weakly-supervised
semantic segmentation"), the single-stage network, on the baseline of Araslanov & Roth
(CVPR 2020).

Data flow (B images, C foreground classes, stride 4 grid h x w):

1. backbone levels; deep features: the last level (stride ``output_stride``), shallow
   features: level 1 (stride 4);
2. context on the deep features (``width`` channels). ``context=True``: the flexible
   context aggregation module (FCA) of the released code: four separable branches (k x 1
   then 1 x k plus 1 x k then k x 1, k = 1, 3, 5, 7 at dilations 1, 12, 24, 36 whatever
   the stride), each weighted by one shared channel attention, an image-pooling branch, a
   1x1 reduction with batch norm, a residual spatial attention x + sa(x) x and dropout; its
   batch norms keep their initial statistics (:class:`FlexibleContext`). ``False``: the
   baseline's ASPP (:class:`ASPP`);
3. decoder to the shallow grid, giving deep and shallow features of ``width`` channels.
   ``fusion=True``: semantically consistent feature fusion (SF2): a flow field predicted
   from both levels warps the deep features onto the shallow grid (:class:`FlowAlignment`,
   half a pixel per flow unit, small initial weights: about a pixel of displacement at
   initialisation), then two branches (shallow, aligned deep) of 3x3 convolutions are
   multiplied and each refined by 3x3 convolutions with a residual; ``False``: the
   baseline's decoder, the upsampled deep features concatenated with a 48-channel
   projection of the shallow ones (then a 3x3 convolution) and, as shallow features, the
   global cue injection (the shallow features modulated by a scale and shift read from the
   deep ones);
4. the stochastic gate mixes the deep and the shallow features (:class:`StochasticGate`);
5. head: two 3x3 convolutions and a 1x1 classifier: class logits [B, C, h, w], turned into
   masks and scores by :func:`wsss.models.ngwp.single_stage_output` (background logit only
   when ``background``); :func:`wsss.methods.single_stage.single_stage_loss` trains it.

HFPL (:mod:`wsss.methods.hfpl`) reads the classifier's logit maps: these are
``output.class_logits``, e.g. ``hfpl.sampling_loss(output.class_logits, labels, addon)``
added to the single-stage loss. HFPL's multinomial posterior puts a zero background logit
before the classes; with ``output.class_logits - ngwp.BACKGROUND_LOGIT`` it equals
``output.masks``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss.models.backbones import Backbone, build_backbone, normalize
from wsss.models.ngwp import FOCAL_LAMBDA, FOCAL_P, SingleStageOutput, single_stage_output

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


ASPP_RATES = (1, 6, 12, 18)  # the baseline's ASPP at stride 16 (doubled at stride 8)
FCA_KERNELS = (1, 3, 5, 7)  # FCA's separable branches: k x 1 / 1 x k ...
FCA_DILATIONS = (1, 12, 24, 36)  # ... at these dilations, whatever the output stride
FLOW_UNIT = 0.5  # output pixels per unit of the flow field (the reference: 2 / (2 x size))


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """Dilations of the baseline's ASPP: 1, 6, 12, 18 at stride 16, 1, 12, 24, 36 at 8."""
    if output_stride not in (8, 16):
        raise ValueError(f"WS-FCN needs output_stride 8 or 16, not {output_stride}")
    return tuple(r * (16 // output_stride) for r in ASPP_RATES)


def frozen_statistics(module: nn.Module) -> nn.Module:
    """``module`` whose batch norms keep their running statistics (mean 0, variance 1 at
    initialisation) in training too: each acts as a learned per-channel affine map, as the
    reference's context module does. :class:`WSFCN` re-applies it in :meth:`WSFCN.train`."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


class SpatialAttention(nn.Module):
    """sigmoid(conv3x3([channel mean, channel max])): [B, D, h, w] -> [B, 1, h, w]."""

    def __init__(self, kernel: int = 3):
        super().__init__()
        self.conv = kaiming(nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return torch.sigmoid(self.conv(pooled))


class ChannelAttention(nn.Module):
    """sigmoid(mlp(avgpool x) + mlp(maxpool x)), one two-layer 1x1 MLP (D -> D -> D, ReLU
    between, no bias) shared by both descriptors: [B, D, h, w] -> [B, D, 1, 1]."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(
            kaiming(nn.Conv2d(channels, channels, 1, bias=False)),
            nn.ReLU(inplace=True),
            kaiming(nn.Conv2d(channels, channels, 1, bias=False)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(
            self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        )


def trimmed_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)`` for a k x 1 or 1 x k convolution of dilation d with same padding, without
    the taps that lie wholly outside the map (|offset| >= its side, which read only zero
    padding): the same result as ``conv(x)``, but a 7-tap kernel at dilation 36 on a
    16-pixel map pads by 3 pixels instead of 108."""
    weight = conv.weight
    d = conv.dilation[0]
    axis = 2 if weight.shape[2] > 1 else 3
    k = weight.shape[axis]
    reach = min(k // 2, (x.shape[axis] - 1) // d)
    centre = k // 2
    weight = weight.narrow(axis, centre - reach, 2 * reach + 1)
    padding = (d * reach, 0) if axis == 2 else (0, d * reach)
    return F.conv2d(x, weight, None, 1, padding, conv.dilation)


class SeparableBranch(nn.Module):
    """One FCA branch, k x 1 then 1 x k plus 1 x k then k x 1 (no bias, no normalisation),
    dilation d, same padding: [B, in, h, w] -> [B, width, h, w]."""

    def __init__(self, in_channels: int, width: int, kernel: int, dilation: int):
        super().__init__()

        def conv(cin: int, size: tuple[int, int]) -> nn.Conv2d:
            return kaiming(nn.Conv2d(cin, width, size, dilation=dilation, bias=False))

        self.column_row = nn.ModuleList([conv(in_channels, (kernel, 1)), conv(width, (1, kernel))])
        self.row_column = nn.ModuleList([conv(in_channels, (1, kernel)), conv(width, (kernel, 1))])

    def forward(self, x: Tensor) -> Tensor:
        a = trimmed_conv(trimmed_conv(x, self.column_row[0]), self.column_row[1])
        b = trimmed_conv(trimmed_conv(x, self.row_column[0]), self.row_column[1])
        return a + b


class FlexibleContext(nn.Module):
    """FCA, flexible context aggregation: [B, in, h, w] -> [B, width, h, w].

    x_k = b_k(x) * ca(b_k(x)) for the separable branches b_k (kernels 1, 3, 5, 7 at
    dilations 1, 12, 24, 36) and one channel attention ca shared by the four; x_5 = image
    pooling (1x1 conv, BN, ReLU) broadcast; y = BN(conv1x1([x_1 .. x_5])); out =
    dropout_0.5(y + sa(y) * y) with the spatial attention sa. Batch-norm statistics frozen
    (:func:`frozen_statistics`)."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.branches = nn.ModuleList(
            SeparableBranch(in_channels, width, k, d) for k, d in zip(FCA_KERNELS, FCA_DILATIONS)
        )
        self.channel_attention = ChannelAttention(width)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, width))
        self.project = nn.Sequential(
            kaiming(nn.Conv2d(width * (len(FCA_KERNELS) + 1), width, 1, bias=False)),
            nn.BatchNorm2d(width),
        )
        self.attention = SpatialAttention()
        self.dropout = nn.Dropout(0.5)
        frozen_statistics(self)

    def forward(self, x: Tensor) -> Tensor:
        parts = []
        for branch in self.branches:
            y = branch(x)
            parts.append(y * self.channel_attention(y))
        parts.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        y = self.project(torch.cat(parts, 1))
        return self.dropout(y + self.attention(y) * y)


class ASPP(nn.Module):
    """The baseline's context: [B, in, h, w] -> [B, width, h, w], a 1x1 branch and 3x3
    branches at :func:`aspp_rates` (conv, BN, ReLU each), image pooling, fused by a 1x1
    conv, BN, ReLU, dropout 0.5. The pooling branch's batch norm needs batches of two."""

    def __init__(self, in_channels: int, width: int, output_stride: int):
        super().__init__()
        rates = aspp_rates(output_stride)
        self.branches = nn.ModuleList(
            conv_bn_relu(in_channels, width, 1 if rate == 1 else 3, rate) for rate in rates
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, width))
        self.project = nn.Sequential(
            kaiming(nn.Conv2d(width * (len(rates) + 1), width, 1, bias=False)),
            nn.BatchNorm2d(width),
        )
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        x = self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], 1))
        return self.dropout(F.relu(x))


def flow_warp(features: Tensor, flow: Tensor, unit: float = 1.0) -> Tensor:
    """Sample ``features`` [B, D, h, w] on the grid of ``flow`` [B, 2, H, W] (bilinear):
    output pixel p reads the input at p + unit * flow(p), flow (x, y) in output pixels
    times ``unit``, the two grids' corners aligned. Zero flow: bilinear resizing (identity
    at the same size)."""
    b, _, height, width = flow.shape
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([grid_x, grid_y], -1).expand(b, -1, -1, -1)
    per_pixel = flow.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)]) * unit
    grid = base + flow.permute(0, 2, 3, 1) * per_pixel
    return F.grid_sample(features, grid.to(features.dtype), align_corners=True)


class FlowAlignment(nn.Module):
    """Deep features [B, width, h, w] aligned to the shallow grid [B, S, H, W] by a learned
    flow field: flow = conv3x3([1x1(up(deep)), 1x1(shallow)]), out = warp(deep, flow)
    [B, width, H, W], a flow unit moving by :data:`FLOW_UNIT` pixels. All three layers keep
    PyTorch's default (small) initial weights, as the reference does, so that the initial
    warp moves features by about a pixel and stays inside the map."""

    def __init__(self, shallow_channels: int, width: int):
        super().__init__()
        mid = width // 2
        self.down_deep = nn.Conv2d(width, mid, 1, bias=False)
        self.down_shallow = nn.Conv2d(shallow_channels, mid, 1, bias=False)
        self.flow = nn.Conv2d(2 * mid, 2, 3, padding=1, bias=False)

    def flow_field(self, shallow: Tensor, deep: Tensor) -> Tensor:
        """The flow [B, 2, H, W] in flow units (:data:`FLOW_UNIT` pixels each)."""
        size = shallow.shape[-2:]
        deep_small = F.interpolate(self.down_deep(deep), size, mode="bilinear", align_corners=False)
        return self.flow(torch.cat([deep_small, self.down_shallow(shallow)], 1))

    def forward(self, shallow: Tensor, deep: Tensor) -> Tensor:
        return flow_warp(deep, self.flow_field(shallow, deep), FLOW_UNIT)


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
    """RGB images in [0, 255] [B, 3, H, W] -> :class:`~wsss.models.ngwp.SingleStageOutput`
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
        self.context = (
            FlexibleContext(backbone.channels[-1], width)
            if context
            else ASPP(backbone.channels[-1], width, backbone.output_stride)
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

    def train(self, mode: bool = True) -> WSFCN:
        """Training mode, the context module's batch-norm statistics kept frozen."""
        super().train(mode)
        if isinstance(self.context, FlexibleContext):
            frozen_statistics(self.context)
        return self

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

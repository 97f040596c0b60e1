"""``wsss export``: a trained CAM or segmentation network as one file that runs without
this toolkit: TorchScript (``torch.jit.load``, torch alone) or ONNX (any ONNX runtime).

The exported network takes what the model file's network takes: float32 RGB images
``[B, 3, H, W]`` with values in 0..255 (it normalises them itself), any batch size and any
height and width (traced at ``--size``, with the height and width left free: checked on
a second, odd size before the file is written). Its outputs:

- a segmentation network (``train-seg``): ``logits`` ``[B, L, H, W]`` at the image size,
  one channel per label (the mask is their argmax);
- a CAM network (``train-cam``): ``logits`` ``[B, C]``, the image-level class scores, and
  ``cams`` ``[B, C, H/s, W/s]``, the class activation maps ReLU(w_c^T f) on the feature grid
  (output stride s), unnormalised, as ``wsss infer-cam`` starts from them.

What the file holds is written into it as JSON (``wsss.json`` among TorchScript's extra
files; the ``wsss`` metadata entry of the ONNX model): kind, arch, label names, the
model's fingerprint, the input and the outputs.

The file is written under a temporary name and renamed when complete and checked; an
existing ``--out`` is refused unless ``--force``. ONNX needs the packages ``onnx`` and
``onnxscript`` (``pip install 'wsss[export]'``); with ``onnxruntime`` too, the written file
is run and compared with the network.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsss.core.stage import Stage, arg

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
KINDS = ("seg", "cam")
OUTPUTS = {"seg": ("logits",), "cam": ("logits", "cams")}
# The exported file must reproduce the network: the largest output difference allowed,
# relative to the largest output (float32 reorderings stay far below it).
TOLERANCE = 1e-4


@dataclass(frozen=True, kw_only=True)
class IO:
    model: Path = arg(help="model file of a CAM network (train-cam) or segmentation network")
    format: str = arg("torchscript", "file format", choices=FORMATS)
    out: Path = arg(help="the file to write (e.g. seg.torchscript.pt, seg.onnx)")
    size: tuple[int, ...] = arg(
        (320, 320), "height and width of the example image it is traced with"
    )
    opset: int = arg(18, "ONNX opset version (18 or later)")
    force: bool = arg(False, "replace an existing --out")


def _trace_friendly_same_conv(module: Any) -> int:
    """Let every TensorFlow-'SAME' convolution of ``module`` compute its padding from the
    input size with integer operations a trace records (``math.ceil`` and ``max`` would
    fix the example's padding, which differs with the parity of the size); the same
    numbers. Returns how many were changed."""
    import types

    from wsss.models.backbones import SameConv2d

    changed = 0
    for conv in module.modules():
        if not isinstance(conv, SameConv2d):
            continue
        k, s, d = conv.kernel_size, conv.stride, conv.dilation
        if any((k[i] - 1) * d[i] < s[i] - 1 for i in range(2)):
            continue  # padding could be negative: keep the original (the check tells)
        conv.forward = types.MethodType(_same_conv_forward, conv)
        changed += 1
    return changed


def _same_conv_forward(self: Any, x: Any) -> Any:
    import torch.nn.functional as F

    h, w = x.shape[-2], x.shape[-1]
    (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
    th = ((h + sh - 1) // sh - 1) * sh + (kh - 1) * dh + 1 - h
    tw = ((w + sw - 1) // sw - 1) * sw + (kw - 1) * dw + 1 - w
    x = F.pad(x, [tw // 2, tw - tw // 2, th // 2, th - th // 2])
    return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def exportable(net: Any, kind: str) -> Any:
    """The network as the exported file computes it: ``images -> logits`` (seg) or
    ``images -> (logits, cams)`` (cam), with trace-friendly padding, in eval mode."""
    import copy

    import torch
    from torch import nn

    net = copy.deepcopy(net).eval()
    _trace_friendly_same_conv(net)

    class Seg(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images)

    class CAM(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.net.features(images)
            pooled = features.mean((2, 3), keepdim=True)
            logits = self.net.classifier(pooled).flatten(1)
            return logits, torch.relu(self.net.classifier(features))

    return (Seg if kind == "seg" else CAM)(net).eval()


def reference_outputs(net: Any, kind: str, images: Any) -> tuple[Any, ...]:
    """What the network of the model file gives (its own methods, unchanged)."""
    import torch

    with torch.no_grad():
        if kind == "seg":
            return (net(images),)
        return net(images), net.cams(images)


def _check_images(size: tuple[int, int], seed: int = 0) -> list[Any]:
    """Two random images: the example size and an odd one (another padding, another
    feature-grid size), batches of two."""
    import torch

    h, w = size
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.rand(2, 3, hh, ww, generator=generator) * 255
        for hh, ww in ((h, w), (h + 17 - h % 2, w + 9 - w % 2))
    ]


def compare(expected: tuple[Any, ...], got: tuple[Any, ...], names: tuple[str, ...]) -> float:
    """The largest difference of ``got`` from ``expected``, relative to the largest expected
    value (at least 1); a ValueError when a shape differs."""
    import numpy as np

    worst = 0.0
    for name, a, b in zip(names, expected, got):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"output {name}: shape {b.shape}, the network gives {a.shape}")
        diff = float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max()))
        worst = max(worst, diff)
    return worst


def _torchscript(module: Any, example: Any, tmp: Path, meta: dict) -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():
        # torch.jit's deprecation notices, and the tracer's notes on sizes turned into
        # Python numbers: the result is checked on another size below.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={"wsss.json": json.dumps(meta)})
        loaded = torch.jit.load(str(tmp), map_location="cpu")

    def run(images: Any) -> tuple[Any, ...]:
        with torch.no_grad():
            out = loaded(images)
        return tuple(t.numpy() for t in (out if isinstance(out, tuple) else (out,)))

    return run


def _require_onnx() -> None:
    from wsss.core.errors import MissingDependency

    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependency(
            f"--format onnx needs the package{'s' if len(missing) > 1 else ''} "
            f"{' and '.join(missing)}, which {'are' if len(missing) > 1 else 'is'} not "
            "installed: pip install 'wsss[export]' (or pip install onnx onnxscript); "
            "--format torchscript needs nothing more"
        )


def _onnx(module: Any, example: Any, tmp: Path, meta: dict, names: tuple, opset: int) -> Any:
    import contextlib
    import sys
    import warnings

    import torch

    _require_onnx()
    if opset < 18:
        raise ValueError(f"--opset {opset}: the ONNX exporter writes opset 18 or later")
    # batch, height and width free (Dim.DYNAMIC: an error, not a silent constant, if the
    # network fixed one; named Dims fail on the padding's guards with torch 2.7)
    if not hasattr(torch.export.Dim, "DYNAMIC"):
        raise ValueError(f"--format onnx needs torch 2.6 or later, not {torch.__version__}")
    dynamic = {"images": {axis: torch.export.Dim.DYNAMIC for axis in (0, 2, 3)}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=list(names),
            dynamic_shapes=dynamic,
            opset_version=opset,
        )
    program.model.metadata_props["wsss"] = json.dumps(meta)
    program.save(str(tmp), external_data=False)
    import onnx

    onnx.checker.check_model(str(tmp))
    try:
        import onnxruntime
    except ImportError:
        log.warning(
            "onnxruntime is not installed: %s was checked as a valid ONNX file but not run "
            "(pip install onnxruntime runs the check)",
            tmp.name,
        )
        return None
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])

    def run(images: Any) -> tuple[Any, ...]:
        return tuple(session.run(list(names), {"images": images.numpy()}))

    return run


def _place(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; without ``force`` never over an existing
    file, even one that appeared meanwhile (a hard link fails if ``out`` exists)."""
    if force:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise ValueError(f"{out} exists: give --force to replace it") from None
    except OSError:  # a file system without hard links
        if out.exists():
            raise ValueError(f"{out} exists: give --force to replace it") from None
        os.replace(tmp, out)
        return
    tmp.unlink()


def run(io: IO, params: None = None) -> Path:
    """Export ``io.model`` to ``io.out``; returns ``io.out``."""
    from wsss.core.errors import UsageError

    if len(io.size) != 2 or min(io.size) < 16:
        raise UsageError(f"--size needs a height and a width of 16 or more, not {io.size}")
    out = Path(io.out)
    if out.exists() and not io.force:
        raise ValueError(f"{out} exists: give --force to replace it")
    if out.is_dir():
        raise ValueError(f"{out} is a folder: give the path of the file to write")
    if io.format == "onnx":
        _require_onnx()

    import torch

    from wsss.core.atomic import temp_name
    from wsss.models.registry import load_model

    loaded = load_model(io.model, KINDS)
    kind, names = loaded.kind, OUTPUTS[loaded.kind]
    module = exportable(loaded.model, kind)
    meta = {
        "format": f"wsss-{io.format}",
        "kind": kind,
        "arch": loaded.arch,
        "label_names": loaded.label_names,
        "fingerprint": loaded.fingerprint,
        "source": str(io.model),
        "input": "images: float32 [B, 3, H, W], RGB, values 0..255 (normalised inside)",
        "outputs": {
            "seg": {"logits": "[B, L, H, W] per-label logits; the mask is their argmax"},
            "cam": {
                "logits": "[B, C] image-level class logits",
                "cams": "[B, C, h, w] class activation maps ReLU(w_c^T f), feature grid",
            },
        }[kind],
    }
    h, w = io.size
    example = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out)
    try:
        if io.format == "torchscript":
            exported = _torchscript(module, example, tmp, meta)
        else:
            exported = _onnx(module, example, tmp, meta, names, io.opset)
        if exported is not None:
            for images in _check_images((h, w)):
                expected = reference_outputs(loaded.model, kind, images)
                worst = compare(tuple(t.numpy() for t in expected), exported(images), names)
                size = "x".join(map(str, images.shape[-2:]))
                if worst > TOLERANCE:
                    raise ValueError(
                        f"the exported network differs from {io.model} on a {size} image by "
                        f"{worst:.2g} (relative); nothing written"
                    )
                log.info("checked on a %s image: largest relative difference %.2g", size, worst)
        _place(tmp, out, io.force)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s, %s network, outputs %s)", out, io.format, kind, ", ".join(names))
    return out


STAGE = Stage("export", "a CAM or segmentation network as TorchScript or ONNX", IO, None, run)

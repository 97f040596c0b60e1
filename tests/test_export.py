"""``wsss export``: the exported TorchScript / ONNX file computes what the model file's
network computes (masks equal, logits within 1e-4) at sizes other than the traced one; an
existing file is kept unless --force; other kinds and a missing ONNX package are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.core.errors import MissingDependency
from wsss.models.backbones import build_backbone
from wsss.models.cam import CAMNet
from wsss.models.deeplab import SegNet
from wsss.models.registry import ModelFileError, load_model, save_model
from wsss.stages import export

LABELS = ["background", "cat", "dog", "sofa"]
SEG_ARCH = {"backbone": "lite0", "output_stride": 16, "head": "psa", "head_channels": 16,
            "head_dilation": 2}  # fmt: skip
CAM_ARCH = {"backbone": "lite0", "output_stride": 16, "head_channels": 16}
# Sizes unlike the traced one (64 x 64): odd, non-square, another batch size.
SIZES = [(1, 64, 64), (2, 57, 83), (1, 97, 45)]


def onnx_missing() -> str | None:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            return f"{name} is not installed (pip install 'wsss[export]')"
    return None


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A segmentation and a CAM model file: ImageNet Lite0 (offline), random heads made
    large enough that the labels differ across an image."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    seg = SegNet(build_backbone("lite0", 16), len(LABELS), "psa", 16, 2)
    cam = CAMNet(build_backbone("lite0", 16), len(LABELS) - 1, 16)
    for net in (seg.head, cam.head, cam.classifier):
        for p in net.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.1)
    save_model(root / "seg.pt", seg.eval(), "seg", SEG_ARCH, LABELS)
    save_model(root / "cam.pt", cam.eval(), "cam", CAM_ARCH, LABELS[1:])
    return {"seg": root / "seg.pt", "cam": root / "cam.pt"}


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> list[np.ndarray]:
    """The outputs of the exported file, loaded without this package."""
    if fmt == "torchscript":
        net = torch.jit.load(str(path))
        with torch.no_grad():
            out = net(images)
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})


def metadata(path: Path, fmt: str) -> dict:
    if fmt == "torchscript":
        files = {"wsss.json": ""}
        torch.jit.load(str(path), _extra_files=files)
        return json.loads(files["wsss.json"])
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["wsss"])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("kind", ["seg", "cam"])
def test_the_exported_network_gives_the_same_masks(
    models: dict[str, Path], kind: str, fmt: str, tmp_path: Path
) -> None:
    if fmt == "onnx" and (reason := onnx_missing()):
        pytest.skip(f"ONNX export not tested: {reason}")
    out = tmp_path / f"{kind}.{'onnx' if fmt == 'onnx' else 'pt'}"
    export.run(export.IO(model=models[kind], format=fmt, out=out, size=(64, 64)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left

    net = load_model(models[kind]).model
    generator = torch.Generator().manual_seed(1)
    for b, h, w in SIZES:
        images = torch.rand(b, 3, h, w, generator=generator) * 255
        got = run_exported(out, fmt, images)
        with torch.no_grad():
            expected = [net(images)] if kind == "seg" else [net(images), net.cams(images)]
        assert [g.shape for g in got] == [tuple(e.shape) for e in expected]
        for e, g in zip(expected, got):
            assert np.abs(e.numpy() - g).max() < 1e-4
        if kind == "seg":
            mask = expected[0].argmax(1).numpy()
            assert np.array_equal(got[0].argmax(1), mask)
            assert len(np.unique(mask)) > 1  # the check sees more than one label
        else:
            assert np.array_equal(got[0].argmax(1), expected[0].argmax(1).numpy())
            # CAM masks where a class is active (ReLU leaves ties at 0 elsewhere)
            cams, active = expected[1].numpy(), expected[1].amax(1).numpy() > 1e-3
            assert active.mean() > 0.5
            assert np.array_equal(got[1].argmax(1)[active], cams.argmax(1)[active])

    meta = metadata(out, fmt)
    assert meta["kind"] == kind and meta["format"] == f"wsss-{fmt}"
    assert meta["label_names"] == (LABELS if kind == "seg" else LABELS[1:])
    assert meta["fingerprint"] == load_model(models[kind]).fingerprint


def test_an_existing_file_is_kept_unless_force(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "seg.pt"
    out.write_bytes(b"someone else's file")
    cmd = [sys.executable, "-m", "wsss.cli", "export", "--model", str(models["seg"]),
           "--out", str(out), "--size", "48", "48"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "exists: give --force" in proc.stderr, proc.stderr[-2000:]
    assert out.read_bytes() == b"someone else's file"
    proc = subprocess.run([*cmd, "--force"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "checked on a 48x48 image" in proc.stderr
    assert metadata(out, "torchscript")["kind"] == "seg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.pt"]


def test_other_kinds_and_a_missing_onnx_package_are_refused(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    aff_file = tmp_path / "aff.pt"
    from wsss.models.affinitynet import from_arch

    aff_arch = {"backbone": "lite0", "output_stride": 8, "widths": "code"}
    save_model(aff_file, from_arch(aff_arch, 4), "affinity", aff_arch, LABELS)
    with pytest.raises(ModelFileError, match="'affinity' model, but a 'seg' or 'cam'"):
        export.run(export.IO(model=aff_file, out=tmp_path / "a.pt"))
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript fails
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(MissingDependency, match=r"needs the packages onnx and onnxscript"):
        export.run(export.IO(model=models["seg"], format="onnx", out=tmp_path / "s.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aff.pt"]

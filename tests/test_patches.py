"""Patch learning (wsss.models.patches, the patch options of wsss.models.cam) and the
stages of progressive patch learning (train-cam --init)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsss.models.backbones import build_backbone
from wsss.models.cam import CAMNet
from wsss.models.patches import patch_bounds, patchwise
from wsss.models.registry import load_model
from wsss.stages import train_cam


def test_patch_bounds_cover_the_axis_evenly() -> None:
    assert patch_bounds(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert patch_bounds(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert patch_bounds(3, 4) == [(0, 1), (1, 2), (2, 3)]  # fewer cells than patches
    with pytest.raises(ValueError, match="at least 1"):
        patch_bounds(8, 0)


def lite0_last_level() -> tuple[object, torch.nn.Module]:
    """The layers of Lite0's last level as a function, and the backbone."""
    backbone = build_backbone("lite0", 16, weights=None).eval()
    captured = {}
    backbone.last_level(
        torch.rand(1, 3, 64, 64), lambda layers, y: captured.setdefault("f", layers)(y)
    )
    return captured["f"], backbone


@pytest.mark.parametrize(("h", "w", "k"), [(8, 8, 4), (10, 10, 4), (7, 9, 2)])
def test_a_change_inside_one_patch_stays_inside_it(h: int, w: int, k: int) -> None:
    """After the split, a change in one patch leaves every other patch's output unchanged:
    for a 3x3 head and for the backbone's last level (dilated 5x5 depthwise convolutions)."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Conv2d(112, 16, 3, padding=1), torch.nn.ReLU()).eval()
    last, _ = lite0_last_level()
    rows, cols = patch_bounds(h, k), patch_bounds(w, k)
    (r0, r1), (c0, c1) = rows[1], cols[0]
    for layers in (head, last):
        x = torch.randn(2, 112, h, w)
        changed = x.clone()
        changed[:, :, r0:r1, c0:c1] += 5.0
        with torch.no_grad():
            a, b = patchwise(layers, x, k), patchwise(layers, changed, k)
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[r0:r1, c0:c1] = True
        assert torch.equal(a[..., ~inside], b[..., ~inside])
        assert not torch.allclose(a[..., inside], b[..., inside])
        # without the split the change spreads beyond the patch
        with torch.no_grad():
            whole = layers(x) - layers(changed)
        assert whole[..., ~inside].abs().max() > 0


@pytest.mark.parametrize("level", ["head", "backbone"])
@pytest.mark.parametrize(("size", "k"), [(128, 4), (160, 4), (112, 2), (48, 4)])
def test_shapes_and_gradients_for_divisible_and_other_grids(level: str, size: int, k: int) -> None:
    """Grids 8x8 / 10x10 / 7x7 / 3x3 at stride 16: logit maps of the whole grid, and a
    gradient in the classifier, the head and the backbone."""
    torch.manual_seed(0)
    net = CAMNet(build_backbone("lite0", 16, weights=None), 5, 16, k, level).train()
    maps = net.logit_maps(torch.rand(2, 3, size, size) * 255)
    grid = -(-size // 16)
    assert maps.shape == (2, 5, grid, grid)
    maps.pow(2).mean().backward()
    for module in (net.classifier, net.head, net.backbone._blocks[-1]):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_whole_image_in_eval_mode() -> None:
    """CAMs and evaluation use the whole image: in eval mode a patch model computes what the
    plain model with the same weights computes; in training mode it differs."""
    torch.manual_seed(0)
    plain = CAMNet(build_backbone("lite0", 16, weights=None), 4, 16)
    patched = CAMNet(build_backbone("lite0", 16, weights=None), 4, 16, 4, "backbone")
    patched.load_state_dict(plain.state_dict())
    images = torch.rand(1, 3, 128, 128) * 255
    with torch.no_grad():
        assert torch.equal(plain.eval().cams(images), patched.eval().cams(images))
        plain.train(), patched.train()
        assert not torch.allclose(plain.logit_maps(images), patched.logit_maps(images))


@pytest.mark.parametrize("level", ["head", "backbone"])
def test_explicit_model_branches_all_receive_gradient(level: str) -> None:
    torch.manual_seed(0)
    net = CAMNet(build_backbone("lite0", 16, None), 5, 16, fusion=(4, 2, 1), patch_level=level)
    net.train()
    net.logit_maps(torch.rand(2, 3, 160, 160) * 255).pow(2).mean().backward()
    assert len(net.branches) == 3
    for branch in net.branches:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
    with pytest.raises(ValueError, match="leave patches at 1"):
        CAMNet(build_backbone("lite0", 16, None), 5, 16, patches=2, fusion=(2, 1))


FAST = dict(head_channels=16, epochs=1, batch_size=8, crop_size=64, num_workers=0, health="warn")


def test_a_progressive_stage_starts_from_the_previous_one(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    def io(name: str, init: Path | None = None) -> train_cam.IO:
        out = tmp_path / name / "model.pt"
        return train_cam.IO(
            manifest=tiny_manifest, out=out, state_dir=out.parent / "state", device="cpu", init=init
        )

    train_cam.run(io("stage-0"), train_cam.Params(patches=4, **FAST))
    first = load_model(tmp_path / "stage-0/model.pt", "cam")
    assert first.arch["patches"] == 4
    # A learning rate too small to move the weights: the stage ends where it started.
    still = train_cam.Params(patches=2, lr=1e-12, warmup_epochs=0, **FAST)
    train_cam.run(io("stage-1", tmp_path / "stage-0/model.pt"), still)
    second = load_model(tmp_path / "stage-1/model.pt", "cam")
    a, b = first.model.state_dict(), second.model.state_dict()
    for key in ("classifier.weight", "head.0.weight", "backbone._blocks.15._project_conv.weight"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    # ... while a stage from ImageNet gets a new random head.
    train_cam.run(io("fresh"), still)
    fresh = load_model(tmp_path / "fresh/model.pt", "cam").model.state_dict()
    assert not torch.allclose(fresh["classifier.weight"], a["classifier.weight"])


def test_a_progressive_stage_without_its_predecessor_fails_clearly(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "stage-0/model.pt"
    cmd = [sys.executable, "-m", "wsss.cli", "train-cam", "--manifest", str(tiny_manifest),
           "--out", str(tmp_path / "stage-1/model.pt"), "--state-dir", str(tmp_path / "s"),
           "--device", "cpu", "--init", str(missing), "--patches", "2", "--epochs", "1",
           "--crop-size", "64", "--head-channels", "16", "--num-workers", "0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 3
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("wsss train-cam: error: ") and str(missing) in last
    assert "previous progressive stage is missing" in last
    assert not (tmp_path / "stage-1/model.pt").exists()

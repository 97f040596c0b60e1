"""The segmentation network: heads, training on pseudo-masks or ground truth, multi-scale
inference, and `wsss predict` on images from outside any dataset."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.core.settings import SegmentParams
from wsss.methods.inference import segment
from wsss.models.backbones import build_backbone
from wsss.models.deeplab import HEADS, SegNet
from wsss.models.registry import load_model
from wsss.stages import predict, train_seg

DATA = Path(__file__).parent / "data"
FAST = train_seg.Params(
    output_stride=16,
    epochs=1,
    batch_size=8,
    crop_size=64,
    num_workers=0,
    head_channels=16,
    head_dilation=2,
    supervision="full",
    health="warn",  # one epoch on a tiny set: the health checks would stop it
)


def train_io(manifest: Path, labels: list[Path], out: Path, state_dir: Path) -> train_seg.IO:
    return train_seg.IO(
        manifest=manifest,
        labels=tuple(labels),
        out=out,
        state_dir=state_dir,
        split="train",
        device="cpu",
    )


def load_seg_model(path: Path) -> tuple[SegNet, list[str]]:
    loaded = load_model(path, "seg")
    return loaded.model, loaded.label_names


@pytest.mark.parametrize("head", HEADS)
def test_heads_give_logits_at_input_size(head: str) -> None:
    net = SegNet(build_backbone("lite0", 16, weights=None), 7, head, 32, 2).eval()
    with torch.no_grad():
        logits = net(torch.rand(2, 3, 45, 70) * 255)
    assert logits.shape == (2, 7, 45, 70)


@pytest.fixture(scope="module")
def seg_model(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "model.pt"
    train_seg.run(train_io(tiny_manifest, [], out, out.parent / "state"), FAST)
    return out


def test_model_file_describes_itself(seg_model: Path) -> None:
    ckpt = torch.load(seg_model, weights_only=True)
    assert ckpt["kind"] == "seg" and ckpt["arch"]["supervision"] == "full"
    model, names = load_seg_model(seg_model)
    assert names[0] == "background" and len(names) == 7
    assert isinstance(model, SegNet) and not model.training


def test_weak_supervision_needs_a_pseudo_mask_per_image(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    with pytest.raises(ValueError, match="24 images of 'train' have no pseudo-mask"):
        train_seg.run(
            train_io(tiny_manifest, [pseudo], tmp_path / "m.pt", tmp_path / "s"),
            train_seg.Params(**{**FAST.__dict__, "supervision": "weak"}),
        )


def test_segment_batches_images_of_different_sizes(seg_model: Path) -> None:
    model, _ = load_seg_model(seg_model)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 40, 56, generator=gen) * 255, torch.rand(3, 64, 48, generator=gen) * 255
    probs = segment(model, [a, b], (1.0, 0.5), flip=True)
    assert [p.shape for p in probs] == [(7, 40, 56), (7, 64, 48)]
    for p in probs:
        torch.testing.assert_close(p.sum(0), torch.ones(p.shape[1:]), atol=1e-4, rtol=0)
    alone = segment(model, [a, a], (1.0,), flip=True)  # same-size batch: no padding at all
    torch.testing.assert_close(
        alone[0], segment(model, [a], (1.0,), flip=True)[0], atol=1e-4, rtol=0
    )


def test_predict_on_outside_images_skips_corrupt_files(seg_model: Path, tmp_path: Path) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    shutil.copy(DATA / "chelsea.jpg", images / "chelsea.jpg")
    Image.open(DATA / "coffee.jpg").resize((120, 80)).save(images / "coffee.png")
    (images / "broken.jpg").write_bytes((DATA / "chelsea.jpg").read_bytes()[:2000])
    (images / "notes.txt").write_text("not an image")
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsss.cli",
            "predict",
            "--model",
            str(seg_model),
            "--images",
            str(images),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--scales",
            "1.0",
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 unreadable files" in proc.stderr
    assert sorted((out / "skipped.txt").read_text().split()) == sorted(
        str(images / n) for n in ("broken.jpg", "notes.txt")
    )
    mask = np.array(Image.open(out / "chelsea.png"))
    assert Image.open(out / "chelsea.png").mode == "P"
    assert mask.shape == (300, 451) and mask.max() < 7
    assert Image.open(out / "coffee_overlay.jpg").size == (120, 80)
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before  # inputs untouched


def test_predict_refuses_to_write_into_the_input_folder(seg_model: Path, tmp_path: Path) -> None:
    shutil.copy(DATA / "chelsea.jpg", tmp_path / "chelsea.jpg")
    with pytest.raises(ValueError, match="must differ from the input folder"):
        predict.run(
            predict.IO(model=seg_model, images=tmp_path, out=tmp_path / ".", device="cpu"),
            SegmentParams(),
        )

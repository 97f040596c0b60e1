"""wsss.api: a model file used from Python, as the README shows it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wsss
from wsss.api import as_rgb, load
from wsss.models.backbones import build_backbone
from wsss.models.cam import CAMNet
from wsss.models.deeplab import SegNet
from wsss.models.registry import save_model

REPO = Path(__file__).resolve().parent.parent
ARCH = {"backbone": "lite0", "output_stride": 16}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("api")
    seg = SegNet(build_backbone("lite0", 16, None), 3, "psa", 16, 2)
    save_model(root / "seg.pt", seg, "seg", {**ARCH, "head": "psa", "head_channels": 16,
               "head_dilation": 2}, ["background", "cat", "dog"])  # fmt: skip
    cam = CAMNet(build_backbone("lite0", 16, None), 2, 16)
    save_model(root / "cam.pt", cam, "cam", {**ARCH, "head_channels": 16}, ["cat", "dog"])
    return {"seg": root / "seg.pt", "cam": root / "cam.pt"}


def test_version() -> None:
    assert re.match(r"^\d+\.\d+", wsss.__version__)


def test_predict_paths_pil_images_and_arrays_alike(models: dict[str, Path], tmp_path) -> None:
    seg = load(models["seg"], device="cpu")
    rgb = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    results = [seg.predict(x) for x in (tmp_path / "a.png", Image.fromarray(rgb), rgb)]
    for r in results:
        assert r.mask.shape == (40, 56) and r.mask.dtype == np.uint8
        assert r.probabilities.shape == (3, 40, 56)
        np.testing.assert_allclose(r.probabilities.sum(0), 1, atol=1e-4)
        assert set(r.scores) <= {"background", "cat", "dog"}
        assert abs(sum(r.scores.values()) - 1) < 1e-6
    np.testing.assert_array_equal(results[0].mask, results[2].mask)


def test_cams_and_classes_of_a_cam_model(models: dict[str, Path]) -> None:
    cam = load(models["cam"], device="cpu")
    image = np.full((48, 64, 3), 128, np.uint8)
    maps = cam.cams(image, ["dog"])
    assert list(maps) == ["dog"] and maps["dog"].shape == (48, 64)
    assert 0 <= maps["dog"].min() and maps["dog"].max() <= 1
    probs = cam.classify(image)
    assert list(probs) == ["cat", "dog"] and all(0 < p < 1 for p in probs.values())
    with pytest.raises(ValueError, match="a 'cam' model; predict needs a 'seg' or 'wsfcn' model"):
        cam.predict(image)
    with pytest.raises(ValueError, match="no class \\['zebra'\\]"):
        cam.cams(image, ["zebra"])


def test_as_rgb_takes_grey_and_rgba() -> None:
    assert as_rgb(np.zeros((4, 5))).shape == (4, 5, 3)
    assert as_rgb(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="expected an image"):
        as_rgb(np.zeros((2, 3, 7)))


def test_the_usage_example_runs(models: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """The Python example of docs/usage.md, with its model paths pointed at the test's files."""
    text = (REPO / "docs" / "usage.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    code = code.replace("results/demo/seg/model.pt", str(models["seg"]))
    code = code.replace("results/demo/cam/model.pt", str(models["cam"]))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].mask.shape == (30, 40)

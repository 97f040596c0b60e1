"""Backbones: the offline Lite0 ImageNet weights, feature levels and strides, weight files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.models.backbones import (
    LITE_NORM,
    Lite0Classifier,
    TorchvisionResNet,
    build_backbone,
    load_lite0_imagenet,
    load_resnet_imagenet,
    normalize,
)

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("chelsea", range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        ("coffee", [967]),  # espresso
    ],
)
def test_lite0_weights_classify_known_photos(name: str, classes: range) -> None:
    model = Lite0Classifier()
    load_lite0_imagenet(model)
    model.eval()
    image = Image.open(DATA / f"{name}.jpg").convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        probs = model(normalize(x, LITE_NORM)).softmax(1)[0]
    top = int(probs.argmax())
    assert top in classes
    assert probs[list(classes)].sum() > 0.5


@pytest.mark.parametrize("output_stride", [8, 16])
def test_lite0_levels_and_strides(output_stride: int) -> None:
    net = build_backbone("lite0", output_stride)
    with torch.no_grad():
        levels = net(torch.zeros(1, 3, 96, 128))
    assert [f.shape[1] for f in levels] == net.channels == [16, 24, 40, 112, 1280]
    strides = [96 // f.shape[2] for f in levels]
    assert strides == [2, 4, 8, min(16, output_stride), output_stride]
    assert levels[-1].shape[-1] == 128 // output_stride


def test_dilated_lite0_keeps_imagenet_behaviour() -> None:
    """Dilation replaces striding without changing weights: same parameter set."""
    a, b = build_backbone("lite0", 8), build_backbone("lite0", 16)
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])


@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet_levels_and_weight_file(tmp_path: Path, output_stride: int) -> None:
    from torchvision.models import resnet50

    reference = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)  # a torchvision-format ImageNet file
    net = build_backbone("resnet50", output_stride, weights=path)
    assert torch.equal(net.stem[0].weight, reference.conv1.weight)
    assert torch.equal(net.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    with torch.no_grad():
        levels = net.eval()(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in levels] == [64, 256, 512, 1024, 2048]
    assert levels[-1].shape[-1] == 64 // output_stride


def test_bad_weight_files_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        build_backbone("lite0", 16, weights=garbage)
    partial = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, partial)
    with pytest.raises(ValueError, match="partial.pth.*missing"):
        load_resnet_imagenet(TorchvisionResNet(50, 16), partial)
    with pytest.raises(ValueError, match="offline ImageNet weights"):
        build_backbone("resnet101", 16, weights="imagenet")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg16", 16)


def test_every_backbone_name_has_a_builder_and_the_offline_flag_is_true() -> None:
    """The names of the settings (and so of the schema and the config check) are the
    builders'; a backbone flagged as shipping its ImageNet weights builds with them, the
    others refuse ``imagenet`` naming the backbone."""
    from wsss.core.settings import BACKBONES
    from wsss.models.backbones import BUILDERS

    assert list(BUILDERS) == list(BACKBONES)
    for name, offline in BACKBONES.items():
        if offline:
            assert isinstance(build_backbone(name, 16, "imagenet"), torch.nn.Module)
        else:
            with pytest.raises(ValueError, match=f"no offline ImageNet weights for {name}"):
                build_backbone(name, 16, "imagenet")
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16", 16)

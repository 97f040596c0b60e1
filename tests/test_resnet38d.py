from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from wsss.models.resnet38d import MEAN, STD, ResNet38d, load_resnet38d_weights


@pytest.fixture(scope="module")
def net8() -> ResNet38d:
    torch.manual_seed(0)
    return ResNet38d(output_stride=8).eval()


@pytest.fixture(scope="module")
def net16() -> ResNet38d:
    torch.manual_seed(0)
    return ResNet38d(output_stride=16).eval()


@pytest.mark.parametrize(
    ("fixture", "strides"), [("net8", [2, 4, 8, 8, 8]), ("net16", [2, 4, 8, 16, 16])]
)
@pytest.mark.parametrize("size", [(64, 64), (45, 70)])
def test_levels_shapes(
    request: pytest.FixtureRequest, fixture: str, strides: list[int], size: tuple[int, int]
) -> None:
    net: ResNet38d = request.getfixturevalue(fixture)
    assert net.channels == [128, 256, 512, 1024, 4096]
    assert net.output_stride == strides[-1]
    with torch.no_grad():
        levels = net(torch.randn(1, 3, *size))
    assert len(levels) == 5
    for level, channels, stride in zip(levels, net.channels, strides):
        height, width = (math.ceil(n / stride) for n in size)
        assert level.shape == (1, channels, height, width)
        assert level.min() >= 0  # every level is taken after BN + ReLU


def test_bad_output_stride() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        ResNet38d(output_stride=32)


def test_parameter_count_and_names(net8: ResNet38d, net16: ResNet38d) -> None:
    # Wide ResNet-38 "A1" without its 1000-way classifier: about 105.07 M parameters.
    count = sum(p.numel() for p in net8.parameters())
    assert abs(count - 105.07e6) / 105.07e6 < 0.01
    state = net8.state_dict()
    for key in [
        "conv1a.weight",
        "b2.conv_branch1.weight",
        "b2.bn_branch2a.running_mean",
        "b2_1.conv_branch2b1.weight",
        "b4_5.bn_branch2b1.running_var",
        "b5.conv_branch1.weight",
        "b5_2.conv_branch2a.weight",
        "b6.conv_branch2b2.weight",
        "b6.bn_branch2b2.weight",
        "b7.conv_branch1.weight",
        "bn7.bias",
        "bn7.running_var",
    ]:
        assert key in state, key
    assert "b2_1.conv_branch1.weight" not in state
    assert "conv1a.bias" not in state
    assert state["b7.conv_branch2b1.weight"].shape == (2048, 1024, 3, 3)
    # Dilation instead of stride changes no parameter: one file serves both output strides.
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in net16.state_dict().items()
    }


def test_normalisation_constants() -> None:
    assert MEAN == (0.485, 0.456, 0.406)
    assert STD == (0.229, 0.224, 0.225)


def _randomise_bn(net: ResNet38d) -> None:
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)


def test_round_trip_with_classifier_key(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = ResNet38d().eval()
    _randomise_bn(source)
    # Converted files carry a classifier and no BatchNorm num_batches_tracked counters.
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    state["fc8.weight"] = torch.randn(20, 4096, 1, 1)
    path = tmp_path / "res38.pth"
    torch.save(state, path)

    torch.manual_seed(2)
    target = ResNet38d().eval()
    load_resnet38d_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source(x), target(x)):
            assert torch.equal(a, b)


def test_wrong_shape_raises(tmp_path: Path, net8: ResNet38d) -> None:
    state = dict(net8.state_dict())
    state["b4_2.conv_branch2a.weight"] = torch.zeros(512, 512, 1, 1)
    path = tmp_path / "wrong_shape.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="wrong_shape.pth") as info:
        load_resnet38d_weights(ResNet38d(), path)
    assert "b4_2.conv_branch2a.weight" in str(info.value)


def test_missing_key_raises(tmp_path: Path, net8: ResNet38d) -> None:
    state = dict(net8.state_dict())
    del state["bn7.running_mean"]
    path = tmp_path / "missing_key.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing_key.pth") as info:
        load_resnet38d_weights(ResNet38d(), path)
    assert "bn7.running_mean" in str(info.value)


def test_garbage_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint\x00\x01\x02")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_resnet38d_weights(ResNet38d(), path)


def test_not_a_state_dict_raises(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match="tensor.pth"):
        load_resnet38d_weights(ResNet38d(), path)

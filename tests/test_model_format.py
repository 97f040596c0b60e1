"""The one model-file format (wsss.models.registry): a round trip, and a clear
ModelFileError for every file that cannot be used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsss.models.backbones import build_backbone
from wsss.models.cam import CAMNet
from wsss.models.registry import ModelFileError, load_model, save_model

ARCH = {"backbone": "lite0", "output_stride": 16, "head_channels": 8}
LABELS = ["cat", "dog", "bird"]


class Opaque:
    """Not a tensor, container or number: a weights-only load refuses to unpickle it."""

    def __init__(self) -> None:
        self.value = 1


def tiny_cam() -> CAMNet:
    torch.manual_seed(0)
    return CAMNet(build_backbone("lite0", 16, weights=None), len(LABELS), 8).eval()


@pytest.fixture(scope="module")
def cam_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "cam.pt"
    save_model(path, tiny_cam(), "cam", ARCH, LABELS, epochs=3, fingerprint="abc")
    return path


@pytest.fixture(scope="module")
def contents(cam_file: Path) -> dict:
    return torch.load(cam_file, weights_only=True)


def load_error(path: Path, kind: str | None = None) -> str:
    with pytest.raises(ModelFileError) as info:
        load_model(path, kind)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "\x1b" not in message
    return message


def test_round_trip_gives_identical_outputs(cam_file: Path, contents: dict) -> None:
    original = tiny_cam()
    assert contents["format"] == "wsss-model" and contents["version"] == 1
    assert contents["kind"] == "cam" and contents["arch"] == ARCH
    loaded = load_model(cam_file, "cam")
    assert isinstance(loaded.model, CAMNet) and not loaded.model.training
    assert loaded.kind == "cam" and loaded.arch == ARCH and loaded.label_names == LABELS
    assert loaded.provenance["epochs"] == 3 and loaded.provenance["fingerprint"] == "abc"
    assert "written" in loaded.provenance
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        assert torch.equal(loaded.model(images), original(images))
        assert torch.equal(loaded.model.cams(images), original.cams(images))
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert load_model(cam_file, ("seg", "cam")).kind == "cam"  # one of several kinds
    assert load_model(cam_file).kind == "cam"  # any kind


def test_other_kind_names_both_kinds(cam_file: Path) -> None:
    message = load_error(cam_file, "seg")
    assert "'cam' model" in message and "'seg' model is needed" in message


def test_unknown_version(contents: dict, tmp_path: Path) -> None:
    path = tmp_path / "v99.pt"
    torch.save({**contents, "version": 99}, path)
    message = load_error(path)
    assert "version 99" in message and "reads 1" in message


def test_missing_keys_are_named(contents: dict, tmp_path: Path) -> None:
    path = tmp_path / "partial.pt"
    torch.save({k: v for k, v in contents.items() if k not in ("state_dict", "arch")}, path)
    message = load_error(path)
    assert "lacks" in message and "arch" in message and "state_dict" in message


def test_unknown_kind(contents: dict, tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({**contents, "kind": "detector"}, path)
    assert "unknown model kind 'detector'" in load_error(path)


@pytest.mark.parametrize(
    "payload", [[1, 2, 3], {"state_dict": {}}, torch.zeros(3)], ids=["list", "dict", "tensor"]
)
def test_non_model_file(payload: object, tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    assert "not a wsss-model file" in load_error(path)


def test_pickle_refused_by_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "pickle.pt"
    torch.save(Opaque(), path)
    message = load_error(path)
    assert "not a readable model file" in message and "weights-only" in message
    assert "Opaque" in message  # what was refused


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a model\x00\x01")
    assert "not a readable model file" in load_error(path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.pt")


def test_weights_that_do_not_fit_the_arch(contents: dict, tmp_path: Path) -> None:
    wider = tmp_path / "wider.pt"
    torch.save({**contents, "arch": {**ARCH, "head_channels": 16}}, wider)
    message = load_error(wider)
    assert "do not fit a 'cam' network" in message and "'head_channels': 16" in message
    assert "size mismatch" in message
    fewer = tmp_path / "fewer.pt"
    torch.save({**contents, "label_names": LABELS[:2]}, fewer)
    assert "size mismatch for classifier.weight" in load_error(fewer)
    incomplete = tmp_path / "incomplete.pt"
    torch.save({**contents, "arch": {"backbone": "lite0"}}, incomplete)
    assert "do not fit" in load_error(incomplete) and "output_stride" in load_error(incomplete)


def test_predict_with_a_cam_model_is_a_one_line_error(cam_file: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out"
    # no GPU slot to claim (it would log a line): no visible or listed devices
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["WSSS_GPUS"] = ""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsss.cli",
            "predict",
            "--model",
            str(cam_file),
            "--images",
            str(images),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"wsss predict: error: {cam_file}: ")
    assert "'cam' model" in lines[0] and "'seg' or 'wsfcn' model is needed" in lines[0]
    assert not out.exists()

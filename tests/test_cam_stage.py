"""The CAM stage on a tiny generated dataset: training, resume, inference, evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.data.manifest import Manifest, read_mask
from wsss.data.palette import label_image
from wsss.data.store import MapsReader, MapsWriter, StoreError
from wsss.jobs import shard_records
from wsss.methods.inference import multiscale_cams
from wsss.models.cam import CAMNet
from wsss.models.registry import load_model
from wsss.stages import eval_maps, train_cam

FAST = train_cam.Params(
    backbone="lite0",
    output_stride=16,
    head_channels=32,
    epochs=1,
    batch_size=8,
    crop_size=64,
    num_workers=0,
    health="warn",  # one epoch on a tiny set: the health checks would stop it
)


def load_cam_model(path: Path) -> CAMNet:
    model = load_model(path, "cam").model
    assert isinstance(model, CAMNet) and not model.training
    return model


def wsss(*args: str) -> list[str]:
    return [sys.executable, "-m", "wsss.cli", *args]


def train_args(manifest: Path, out: Path, state: Path, epochs: int) -> list[str]:
    return wsss(
        "train-cam",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--state-dir",
        str(state),
        "--epochs",
        str(epochs),
        "--head-channels",
        "32",
        "--crop-size",
        "64",
        "--batch-size",
        "8",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--output-stride",
        "16",
        "--health",
        "warn",
    )


@pytest.fixture(scope="module")
def cam_model(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cam") / "model.pt"
    io = train_cam.IO(
        manifest=tiny_manifest, out=out, state_dir=out.parent / "state", split="train", device="cpu"
    )
    train_cam.run(io, FAST)
    return out


def test_model_file_loads_weights_only(cam_model: Path, tiny_manifest: Path) -> None:
    ckpt = torch.load(cam_model, weights_only=True)
    assert ckpt["kind"] == "cam" and ckpt["arch"]["backbone"] == "lite0"
    assert ckpt["label_names"] == list(Manifest.load(tiny_manifest).classes)
    model = load_cam_model(cam_model)
    with torch.no_grad():
        cams = model.cams(torch.rand(1, 3, 64, 64) * 255)
    assert cams.shape == (1, 6, 4, 4) and cams.min() >= 0


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            raise TimeoutError
        time.sleep(0.05)


def test_killed_training_resumes_and_matches_uninterrupted(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    out = tmp_path / "model.pt"
    log = tmp_path / "train.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(train_args(tiny_manifest, out, state, 3), stderr=fh)
        wait_for(lambda: (state / "last.pt").exists() or proc.poll() is not None)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    finished = torch.load(state / "last.pt", weights_only=True)["epoch"]
    assert 1 <= finished < 3

    resumed = subprocess.run(
        train_args(tiny_manifest, out, state, 3), capture_output=True, text=True, check=True
    )
    assert f"after epoch {finished}" in resumed.stderr

    straight = tmp_path / "straight.pt"
    subprocess.run(
        train_args(tiny_manifest, straight, tmp_path / "s2", 3), check=True, capture_output=True
    )
    a = torch.load(out, weights_only=True)["state_dict"]
    b = torch.load(straight, weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_multiscale_cams_are_normalised(cam_model: Path) -> None:
    model = load_cam_model(cam_model)
    image = torch.rand(3, 50, 70) * 255
    cams = multiscale_cams(model, image, [1, 4], (1.0, 0.5), flip=True)
    assert cams.shape == (2, 50, 70)
    peaks = cams.flatten(1).max(1).values
    assert torch.all((peaks > 0.99) & (peaks <= 1.0)) or torch.all(peaks == 0)
    assert multiscale_cams(model, image, [], (1.0,), flip=False).shape == (0, 50, 70)


def test_shards_partition_the_split(tiny_manifest: Path) -> None:
    records = Manifest.load(tiny_manifest).split("train")
    shards = [shard_records(records, k, 5) for k in range(5)]
    ids = [r.id for shard in shards for r in shard]
    assert sorted(ids) == sorted(r.id for r in records) and len(ids) == len(set(ids))
    with pytest.raises(ValueError):
        shard_records(records, 5, 5)


def test_infer_cam_killed_mid_shard_leaves_no_complete_file(
    cam_model: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shard-0.h5"
    args = wsss(
        "infer-cam",
        "--manifest",
        str(tiny_manifest),
        "--model",
        str(cam_model),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--scales",
        *["1.0"] * 40,
    )
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    tmp = out.with_name(f".{out.name}.tmp-{proc.pid}")  # the child's temporary name
    wait_for(lambda: tmp.exists() or proc.poll() is not None)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "killed before it finished"
    assert tmp.exists() and not out.exists()
    with pytest.raises(StoreError):
        MapsReader([tmp])

    subprocess.run(
        args[: args.index("--scales")] + ["--scales", "1.0"], check=True, capture_output=True
    )
    with MapsReader([out]) as reader:
        assert len(reader.ids()) == 24


def perfect_maps(manifest: Manifest, split: str, path: Path) -> None:
    """Maps equal to the ground truth: 1 on each present class's pixels, 0 elsewhere."""
    with MapsWriter(path, "cam", manifest.label_names, manifest.has_background, 0, 1) as w:
        for rec in manifest.split(split):
            mask = read_mask(rec.mask)
            maps = np.stack([(mask == c + manifest.offset) for c in rec.labels]).astype(np.float32)
            w.add(rec.id, maps.reshape(len(rec.labels), *mask.shape), rec.labels)


def test_eval_scores_perfect_maps_and_the_floor(tiny_manifest: Path, tmp_path: Path) -> None:
    manifest = Manifest.load(tiny_manifest)
    perfect_maps(manifest, "train", tmp_path / "maps.h5")
    io = eval_maps.IO(
        manifest=tiny_manifest,
        maps=(tmp_path / "maps.h5",),
        out=tmp_path / "m.json",
        stage="cam",
        split="train",
    )
    result = eval_maps.run(io, eval_maps.Params(bg_values=(1.0, 4.0)))
    assert result["miou"] == 100.0 and result["curve"] == [
        {"alpha": 1.0, "miou": 100.0},
        {"alpha": 4.0, "miou": 100.0},
    ]
    # floor = everything background: IoU_bg = share of background pixels, others 0
    masks = [read_mask(r.mask) for r in manifest.split("train")]
    bg_share = sum((m == 0).sum() for m in masks) / sum(m.size for m in masks)
    present = len({int(v) for m in masks for v in np.unique(m)})
    assert result["floor"]["miou"] == pytest.approx(100 * bg_share / present, abs=0.01)
    assert json.loads((tmp_path / "m.json").read_text())["miou"] == 100.0


def test_eval_without_background_uses_present_classes(tiny_manifest: Path, tmp_path: Path) -> None:
    """A copy of the dataset with background pixels ignored and classes shifted to 0..5."""
    manifest = Manifest.load(tiny_manifest)
    records = []
    for rec in manifest.split("train"):
        mask = read_mask(rec.mask).astype(np.int16) - 1
        mask[mask < 0] = 255
        path = tmp_path / f"{rec.id}.png"
        label_image(mask.astype(np.uint8)).save(path)
        records.append(replace(rec, mask=str(path)))
    no_bg = Manifest("nobg", manifest.classes, False, {"train": records})
    no_bg.save(tmp_path / "nobg.json")
    perfect_maps(no_bg, "train", tmp_path / "maps.h5")
    io = eval_maps.IO(
        manifest=tmp_path / "nobg.json",
        maps=(tmp_path / "maps.h5",),
        out=tmp_path / "m.json",
        stage="cam",
    )
    result = eval_maps.run(io, eval_maps.Params())
    assert result["miou"] == 100.0 and result["curve"] == [] and result["best"] == {}
    assert "background" not in result["per_class"]
    assert 0 < result["floor"]["miou"] < 100


def test_eval_refuses_maps_missing_images(tiny_manifest: Path, tmp_path: Path) -> None:
    manifest = Manifest.load(tiny_manifest)
    half = Manifest("half", manifest.classes, True, {"train": manifest.split("train")[:5]})
    perfect_maps(half, "train", tmp_path / "maps.h5")
    proc = subprocess.run(
        wsss(
            "eval-maps",
            "--manifest",
            str(tiny_manifest),
            "--maps",
            str(tmp_path / "maps.h5"),
            "--out",
            str(tmp_path / "m.json"),
            "--stage",
            "cam",
        ),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3 and "19 images have no maps" in proc.stderr
    assert not (tmp_path / "m.json").exists()
    assert os.listdir(tmp_path) == ["maps.h5"]

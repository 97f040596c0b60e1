"""Outputs and artefacts, second round: `wsss predict` never replaces what it did not write;
maps that are not finite, an exploding training and scales of 0 or less stop the run;
artefacts of other classes, another kind or another model are refused; a damaged shard is
named (and `wsss inspect` says so); `wsss inspect F | head` exits quietly. Real files,
real commands (docs/reliability.md, cases 45 to 59)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from wsss.core.errors import EXIT_INPUT, EXIT_TRAINING
from wsss.core.settings import TrainParams
from wsss.data.manifest import Manifest
from wsss.data.store import MapsWriter, StoreError
from wsss.models.affinitynet import AffinityNet
from wsss.models.backbones import build_backbone
from wsss.models.cam import CAMNet
from wsss.models.deeplab import SegNet
from wsss.models.registry import save_model
from wsss.training.loop import check_health

CAM_ARCH = {"backbone": "lite0", "output_stride": 16, "head_channels": 8}
SEG_ARCH = {
    "backbone": "lite0",
    "output_stride": 16,
    "head": "psa",
    "head_channels": 16,
    "head_dilation": 2,
}
AFF_ARCH = {"backbone": "lite0", "output_stride": 8, "widths": "code"}


def wsss(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``wsss ARGS`` in a new process (one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "wsss.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The error line of a failed command: exit 3 (input), no traceback, one line."""
    assert proc.returncode == EXIT_INPUT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"wsss {command}:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    return errors[0]


def cam_model(path: Path, labels: list[str], seed: int = 0, nan: bool = False) -> Path:
    torch.manual_seed(seed)
    net = CAMNet(build_backbone("lite0", 16, weights=None), len(labels), 8).eval()
    if nan:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float("nan"))
    save_model(path, net, "cam", CAM_ARCH, labels)
    return path


def seg_model(path: Path, labels: list[str], seed: int = 0, nan: bool = False) -> Path:
    torch.manual_seed(seed)
    net = SegNet(build_backbone("lite0", 16, weights=None), len(labels), "psa", 16, 2).eval()
    if nan:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float("nan"))
    save_model(path, net, "seg", SEG_ARCH, labels)
    return path


@pytest.fixture(scope="module")
def manifest(tiny_manifest: Path) -> Manifest:
    return Manifest.load(tiny_manifest)


@pytest.fixture(scope="module")
def models(manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained model files of the demo's labels (two CAM and two segmentation models of
    other weights), of other labels, and with NaN weights; an affinity model."""
    root = tmp_path_factory.mktemp("models")
    classes, labels = list(manifest.classes), manifest.label_names
    torch.manual_seed(0)
    affinity = AffinityNet(build_backbone("lite0", 8, weights=None), "code").eval()
    save_model(root / "aff.pt", affinity, "affinity", AFF_ARCH, labels)
    return {
        "cam": cam_model(root / "cam.pt", classes),
        "cam_b": cam_model(root / "cam_b.pt", classes, seed=1),
        "cam_other": cam_model(root / "cam_other.pt", [f"other{i}" for i in range(len(classes))]),
        "cam_nan": cam_model(root / "cam_nan.pt", classes, nan=True),
        "seg": seg_model(root / "seg.pt", labels),
        "seg_b": seg_model(root / "seg_b.pt", labels, seed=1),
        "seg_other": seg_model(root / "seg_other.pt", ["background"] + ["x"] * len(classes)),
        "seg_nan": seg_model(root / "seg_nan.pt", labels, nan=True),
        "aff": root / "aff.pt",
    }


def infer_cam(manifest: Path, model: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return wsss("infer-cam", "--manifest", str(manifest), "--model", str(model), "--out",
                str(out), "--split", "val", "--device", "cpu", "--scales", "1.0",
                *flags)  # fmt: skip


@pytest.fixture(scope="module")
def cam_shards(
    tiny_manifest: Path, models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Real shards of the val split: the CAMs of model A (one shard, and shard 0 of 2), of
    model B (shard 1 of 2), and the random walk over model A's CAMs."""
    root = tmp_path_factory.mktemp("shards")
    shards = {
        "a": (models["cam"], ()),
        "a0": (models["cam"], ("--shard", "0", "--num-shards", "2")),
        "a1": (models["cam"], ("--shard", "1", "--num-shards", "2")),
        "b1": (models["cam_b"], ("--shard", "1", "--num-shards", "2")),
    }
    for name, (model, flags) in shards.items():
        proc = infer_cam(tiny_manifest, model, root / f"{name}.h5", *flags)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = random_walk(tiny_manifest, models["aff"], root / "a.h5", root / "rw.h5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: root / f"{name}.h5" for name in [*shards, "rw"]}


def random_walk(manifest: Path, model: Path, maps: Path, out: Path) -> subprocess.CompletedProcess:
    return wsss("random-walk", "--manifest", str(manifest), "--model", str(model), "--maps",
                str(maps), "--out", str(out), "--split", "val", "--device", "cpu",
                "--alphas", "4", "16", "--logt", "2")  # fmt: skip


# ---- wsss predict: only into an empty folder or its own ----------------------------------


def photos(folder: Path, count: int, size: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    return folder


def predict(model: Path, images: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return wsss("predict", "--model", str(model), "--images", str(images), "--out", str(out),
                "--device", "cpu", "--scales", "1.0", *flags)  # fmt: skip


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_predict_refuses_a_folder_of_files_it_did_not_write(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """--out mydata/masks (the ground truth): refused, every mask untouched."""
    images = photos(tmp_path / "mydata/images", 2)
    masks = tmp_path / "mydata/masks"
    masks.mkdir()
    for name in ("img000.png", "img001.png"):
        Image.fromarray(np.full((24, 24), 3, np.uint8)).save(masks / name)
    before = contents(masks)
    error = one_line_error(predict(models["seg"], images, masks), "predict")
    assert str(masks) in error and "did not write" in error and "img000.png" in error
    assert contents(masks) == before
    # the folder above the images is refused as well, the images untouched
    before = contents(images)
    assert predict(models["seg"], images, tmp_path / "mydata").returncode == EXIT_INPUT
    assert contents(images) == before


def test_predict_rerun_in_its_own_folder_keeps_no_stale_results(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """--format coco over a png run: the earlier PNGs go; a file of the user's there is
    kept; one where a result would go is refused."""
    images, out = photos(tmp_path / "in", 3), tmp_path / "out"
    assert predict(models["seg"], images, out).returncode == 0
    marker = json.loads((out / ".wsss-predict.json").read_text())
    assert marker["complete"] and marker["format"] == "png" and "img000.png" in marker["files"]
    (out / "notes.txt").write_text("my notes")
    proc = predict(models["seg_b"], images, out, "--format", "coco")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        ".wsss-predict.json", "notes.txt", "predictions.json", "skipped.txt"
    ]  # fmt: skip
    marker = json.loads((out / ".wsss-predict.json").read_text())
    assert marker["complete"] and marker["format"] == "coco"
    assert marker["files"] == ["predictions.json", "skipped.txt"]
    # a file predict did not write, where a result would go: refused, nothing deleted
    Image.new("L", (24, 24)).save(out / "img001.png")
    before = contents(out)
    error = one_line_error(predict(models["seg"], images, out), "predict")
    assert str(out) in error and "img001.png is in the way" in error
    assert contents(out) == before


def test_a_killed_predict_rerun_leaves_no_mix_of_two_models(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Model A fills the folder; model B's rerun is killed half-way: what is left is B's
    alone, marked incomplete; the next run ends with one model's complete set."""
    images = photos(tmp_path / "in", 12, size=64)
    out, reference = tmp_path / "out", tmp_path / "b-alone"
    flags = ("--batch-size", "1", "--no-flip")
    assert predict(models["seg"], images, out, *flags).returncode == 0
    a_results = contents(out)
    slow = ("--scales", "1.0", "2.0", *flags)  # two scales: slow enough to be killed
    assert predict(models["seg_b"], images, reference, *slow).returncode == 0
    b_results = contents(reference)
    assert any(a_results[n] != b_results[n] for n in a_results if n.endswith(".png"))

    cmd = [sys.executable, "-m", "wsss.cli", "predict", "--model", str(models["seg_b"]),
           "--images", str(images), "--out", str(out), "--device", "cpu", *slow]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )

    def half_way() -> bool:  # A's files deleted (skipped.txt, listed last, too), 3 of B's
        marker = json.loads((out / ".wsss-predict.json").read_text())
        done = not marker["complete"] and not (out / "skipped.txt").exists()
        return done and len(list(out.glob("img*_overlay.jpg"))) >= 3

    deadline = time.time() + 120
    while not half_way():
        assert proc.poll() is None and time.time() < deadline, "predict ended before the kill"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    marker = json.loads((out / ".wsss-predict.json").read_text())
    assert not marker["complete"]
    left = {n: v for n, v in contents(out).items() if n.startswith("img") and n.endswith(".png")}
    assert 3 <= len(left) < 12
    assert all(b_results[name] == data for name, data in left.items())  # B's alone
    assert set(left) <= set(marker["files"]) and not (out / "skipped.txt").exists()
    # the next run (model A again) ends with A's complete set and nothing else
    assert predict(models["seg"], images, out, *flags).returncode == 0
    after = contents(out)
    assert after.keys() == a_results.keys()
    assert all(after[n] == a_results[n] for n in after if n.endswith(".png"))
    assert json.loads((out / ".wsss-predict.json").read_text())["complete"]


# ---- maps that are not finite, an exploding training, scales of 0 or less ----------------


def test_an_exploding_training_fails_its_health_check(tiny_manifest: Path, tmp_path: Path) -> None:
    """lr 1e9, one epoch, no held-out split: the loss reaches ~1e23 while staying finite."""
    out = tmp_path / "cam/model.pt"
    proc = wsss("train-cam", "--manifest", str(tiny_manifest), "--out", str(out), "--state-dir",
                str(tmp_path / "cam/state"), "--device", "cpu", "--head-channels", "32",
                "--crop-size", "64", "--batch-size", "8", "--num-workers", "0", "--epochs", "1",
                "--lr", "1e9", "--held-out", "")  # fmt: skip
    assert proc.returncode == EXIT_TRAINING, proc.stderr[-3000:]
    assert "training loss exploded" in proc.stderr and "Try: lower the learning rate" in proc.stderr
    assert not out.exists()
    verdict = json.loads((tmp_path / "cam/health.json").read_text())
    assert not verdict["healthy"] and verdict["final_loss"] > 1e10
    assert verdict["problems"][0]["what"] == "training loss exploded"


def test_weights_that_are_not_finite_fail_the_health_check(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    history = [{"epoch": 1, "loss": 0.5, "first_step_loss": 0.7}]
    problems = check_health(
        net, history, None, TrainParams(health="warn"), tmp_path / "health.json", "t", "cam.train"
    )
    assert [p.what for p in problems] == ["the trained weights are not finite"]
    assert "weight" in problems[0].seen
    assert not json.loads((tmp_path / "health.json").read_text())["healthy"]


def test_a_network_giving_nan_stops_infer_cam_infer_seg_and_predict(
    tiny_manifest: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    proc = infer_cam(tiny_manifest, models["cam_nan"], tmp_path / "c.h5")
    error = one_line_error(proc, "infer-cam")
    assert "val_" in error and "CAMs of this image are not finite" in error
    assert not (tmp_path / "c.h5").exists()
    proc = wsss("infer-seg", "--manifest", str(tiny_manifest), "--model", str(models["seg_nan"]),
                "--out", str(tmp_path / "seg"), "--split", "val", "--device", "cpu",
                "--scales", "1.0")  # fmt: skip
    error = one_line_error(proc, "infer-seg")
    assert "the class probabilities" in error and "not finite" in error
    assert not (tmp_path / "seg").exists()
    images = photos(tmp_path / "in", 1)
    error = one_line_error(predict(models["seg_nan"], images, tmp_path / "out"), "predict")
    assert "img000.png: the class probabilities" in error
    assert not (tmp_path / "out/img000.png").exists()


def test_maps_that_are_not_finite_are_refused_by_the_store(tmp_path: Path) -> None:
    path = tmp_path / "rw.h5"
    maps = np.full((1, 4, 4), 0.5, np.float32)
    background = np.full((1, 4, 4), np.nan, np.float32)
    with pytest.raises(StoreError, match=r"rw.h5: background of image 'x': 16 of 16 values"):
        with MapsWriter(path, "rw", ["background", "a"], True, 0, 1, 8, alphas=(16.0,)) as w:
            w.add("x", maps, [0], background=background)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("scale", ["0", "-1"])
def test_scales_of_zero_or_less_are_refused(
    tiny_manifest: Path, models: dict[str, Path], tmp_path: Path, scale: str
) -> None:
    proc = wsss("infer-cam", "--manifest", str(tiny_manifest), "--model", str(models["cam"]),
                "--out", str(tmp_path / "c.h5"), "--split", "val", "--device", "cpu",
                "--scales", "1.0", scale)  # fmt: skip
    assert f"scales: {scale} is not a positive image scale" in one_line_error(proc, "infer-cam")
    proc = wsss("infer-seg", "--manifest", str(tiny_manifest), "--model", str(models["seg"]),
                "--out", str(tmp_path / "seg"), "--split", "val", "--device", "cpu",
                "--scales", scale)  # fmt: skip
    assert "is not a positive image scale" in one_line_error(proc, "infer-seg")
    proc = predict(models["seg"], photos(tmp_path / "in", 1), tmp_path / "out", "--scales", scale)
    assert "is not a positive image scale" in one_line_error(proc, "predict")
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "seg").exists()
    assert not (tmp_path / "out").exists()


def test_the_config_schema_refuses_scales_of_zero_or_less(tmp_path: Path) -> None:
    from test_workflow_config import dry_run

    for extra in ({"cam": {"infer": {"scales": [1.0, 0]}}}, {"seg": {"infer": {"scales": [-1]}}}):
        proc = dry_run(tmp_path, extra)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "Job stats" not in output
        assert "less than or equal to the minimum of 0" in output, output[-3000:]


# ---- artefacts of other classes, another kind or another model; damaged shards -----------


def test_a_model_of_other_classes_is_refused(
    tiny_manifest: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    """Same number of outputs, other label names: the maps would be mislabelled."""
    proc = infer_cam(tiny_manifest, models["cam_other"], tmp_path / "c.h5")
    error = one_line_error(proc, "infer-cam")
    assert str(models["cam_other"]) in error and "other0" in error and "cross" in error
    assert not (tmp_path / "c.h5").exists()
    proc = wsss("infer-seg", "--manifest", str(tiny_manifest), "--model", str(models["seg_other"]),
                "--out", str(tmp_path / "seg"), "--split", "val", "--device", "cpu",
                "--scales", "1.0")  # fmt: skip
    error = one_line_error(proc, "infer-seg")
    assert "trained on the labels" in error and str(tiny_manifest) in error
    assert not (tmp_path / "seg").exists()


def test_shards_carry_their_kind_and_model(
    tiny_manifest: Path, models: dict[str, Path], cam_shards: dict[str, Path], tmp_path: Path
) -> None:
    with h5py.File(cam_shards["a"]) as f:
        cam_fingerprint = f.attrs["model"]
    with h5py.File(cam_shards["rw"]) as f:
        assert f.attrs["kind"] == "rw" and f.attrs["source"] == cam_fingerprint
        assert f.attrs["model"] and f.attrs["model"] != cam_fingerprint
    model_info = wsss("inspect", str(models["cam"])).stdout
    assert f"model fingerprint {cam_fingerprint}" in model_info
    shard_info = wsss("inspect", str(cam_shards["rw"])).stdout
    assert f"from the CAMs of the model {cam_fingerprint}" in shard_info


def test_a_shard_of_the_wrong_kind_is_refused(
    tiny_manifest: Path, models: dict[str, Path], cam_shards: dict[str, Path], tmp_path: Path
) -> None:
    """A random-walk shard as the random walk's CAMs, CAMs as the pseudo-masks' input."""
    error = one_line_error(
        random_walk(tiny_manifest, models["aff"], cam_shards["rw"], tmp_path / "rw.h5"),
        "random-walk",
    )
    assert str(cam_shards["rw"]) in error and "'rw' maps, but 'cam' maps are needed" in error
    assert not (tmp_path / "rw.h5").exists()
    proc = wsss("pseudo-masks", "--manifest", str(tiny_manifest), "--maps", str(cam_shards["a"]),
                "--out", str(tmp_path / "pseudo"), "--split", "val", "--no-crf")  # fmt: skip
    assert "'cam' maps, but 'rw' maps are needed" in one_line_error(proc, "pseudo-masks")
    assert not (tmp_path / "pseudo").exists()
    proc = wsss("eval-maps", "--manifest", str(tiny_manifest), "--maps", str(cam_shards["rw"]),
                "--out", str(tmp_path / "m.json"), "--stage", "cam", "--split", "val")  # fmt: skip
    assert "'rw' maps, but 'cam' maps are needed" in one_line_error(proc, "eval-maps")
    assert not (tmp_path / "m.json").exists()


def test_shards_of_two_models_are_refused_together(
    tiny_manifest: Path, cam_shards: dict[str, Path], tmp_path: Path
) -> None:
    def eval_maps(*maps: Path) -> subprocess.CompletedProcess:
        return wsss("eval-maps", "--manifest", str(tiny_manifest), "--maps", *map(str, maps),
                    "--out", str(tmp_path / "m.json"), "--stage", "cam",
                    "--split", "val")  # fmt: skip

    assert eval_maps(cam_shards["a0"], cam_shards["a1"]).returncode == 0
    error = one_line_error(eval_maps(cam_shards["a0"], cam_shards["b1"]), "eval-maps")
    assert str(cam_shards["b1"]) in error and "its model" in error
    assert str(cam_shards["a0"]) in error


def test_the_store_checks_the_model_given(
    models: dict[str, Path], cam_shards: dict[str, Path]
) -> None:
    from wsss.data.store import MapsReader
    from wsss.models.registry import load_model

    fingerprint = load_model(models["cam"], "cam").fingerprint
    with MapsReader([cam_shards["a"]], kind="cam", model=fingerprint) as reader:
        assert reader.model == fingerprint
    other = load_model(models["cam_b"], "cam").fingerprint
    with pytest.raises(StoreError, match=f"written by the model {fingerprint}, not by"):
        MapsReader([cam_shards["a"]], model=other)


def damage(shard: Path, out: Path, image_id: str) -> None:
    """A copy of ``shard`` with bytes in the middle of one image's maps overwritten."""
    out.write_bytes(shard.read_bytes())
    with h5py.File(out) as f:
        offset = f[f"images/{image_id}/maps"].id.get_chunk_info(0).byte_offset
    with open(out, "r+b") as fh:
        fh.seek(offset + 8)
        fh.write(b"\x00\xff" * 16)


def test_a_damaged_shard_is_named_and_inspect_says_so(
    tiny_manifest: Path, models: dict[str, Path], cam_shards: dict[str, Path], tmp_path: Path
) -> None:
    last = sorted(r.id for r in Manifest.load(tiny_manifest).split("val"))[-1]
    damaged = tmp_path / "damaged.h5"
    damage(cam_shards["a"], damaged, last)
    error = one_line_error(wsss("inspect", str(damaged)), "inspect")
    assert f"{damaged}: damaged: the maps of image '{last}' cannot be read" in error
    error = one_line_error(
        random_walk(tiny_manifest, models["aff"], damaged, tmp_path / "rw.h5"), "random-walk"
    )
    assert f"{damaged}: damaged" in error and last in error
    assert not (tmp_path / "rw.h5").exists()
    # cut short mid-way (a copy that stopped half-way)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(cam_shards["a"].read_bytes()[: cam_shards["a"].stat().st_size // 2])
    assert f"{cut}: damaged (cut short)" in one_line_error(wsss("inspect", str(cut)), "inspect")
    error = one_line_error(
        random_walk(tiny_manifest, models["aff"], cut, tmp_path / "rw.h5"), "random-walk"
    )
    assert f"{cut}: damaged (cut short)" in error
    # the intact shard: every image read
    assert "all readable" in wsss("inspect", str(cam_shards["a"])).stdout


# ---- wsss inspect F | head ---------------------------------------------------------------


def test_inspect_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.h5"
    with MapsWriter(path, "cam", ["a", "b"], False, 0, 1) as writer:
        for i in range(2000):  # a listing well beyond a pipe's buffer
            writer.add(f"image_{i:05d}", np.full((1, 2, 2), 0.5, np.float32), [1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rc = tmp_path / "rc"
    command = f"{sys.executable} -m wsss.cli inspect --limit 5000 {path} | head -n 2"
    proc = subprocess.run(
        ["bash", "-c", f"{command}; echo ${{PIPESTATUS[0]}} > {rc}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.stdout.splitlines()[0].startswith(f"{path}: cam maps")
    assert len(proc.stdout.splitlines()) == 2
    assert proc.stderr == ""
    assert rc.read_text().strip() == "1"  # the output was cut short: not 0 (wsss --help)

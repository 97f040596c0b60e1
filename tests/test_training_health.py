"""Training health in the training skeleton: a training that fails stops with a message,
the per-epoch history and verdict are written, and border-peaked CAMs are flagged."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from wsss.data.manifest import Manifest
from wsss.stages import train_cam
from wsss.training import held_out

TINY = dict(output_stride=16, head_channels=32, batch_size=8, crop_size=64, num_workers=0)


def train_cli(manifest: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "wsss.cli",
            "train-cam",
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--state-dir",
            str(out.parent / "train-state"),
            "--device",
            "cpu",
            "--head-channels",
            "32",
            "--crop-size",
            "64",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            *flags,
        ],
        capture_output=True,
        text=True,
    )


def test_a_diverging_training_stops_the_run_with_what_to_try(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cam/model.pt"
    proc = train_cli(tiny_manifest, out, "--epochs", "3", "--lr", "50")
    assert proc.returncode == 4, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("wsss train-cam:")]
    assert error, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    message = proc.stderr[proc.stderr.index(error[0]) :]
    # Either the loss blew up at once or the health checks failed at the end; both say
    # what was seen and what to try.
    assert "Try:" in message or "try" in message
    assert "learning rate" in message or "lr" in message
    assert not out.exists()  # no model file: the workflow cannot go on with it


def test_health_verdict_and_history_are_written_beside_the_model(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cam/model.pt"
    io = train_cam.IO(
        manifest=tiny_manifest, out=out, state_dir=tmp_path / "cam/state", device="cpu"
    )
    train_cam.run(io, train_cam.Params(epochs=2, health="warn", **TINY))
    rows = list(csv.DictReader((tmp_path / "cam/training.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        assert float(row["loss"]) > 0
        assert 0 <= float(row["val_map"]) <= 100
        assert float(row["grad_norm"]) > 0
    verdict = json.loads((tmp_path / "cam/health.json").read_text())
    manifest = Manifest.load(tiny_manifest)
    assert verdict["metric"] == "val_map"
    assert verdict["final"] == float(rows[-1]["val_map"])
    # The prior: what the label frequencies of the train split give on the val split.
    assert 0 < verdict["prior"] < 100
    assert verdict["prior"] == float(rows[-1]["val_map_prior"])
    assert verdict["healthy"] == (not verdict["problems"])
    assert len(manifest.split("val")) == 8
    assert out.exists()
    # The same history as TensorBoard scalars (the tensorboard extra is in the lock).
    events = EventAccumulator(str(tmp_path / "cam/tensorboard"))
    events.Reload()
    for column in ("loss", "val_map", "grad_norm"):
        points = events.Scalars(f"train-cam/{column}")
        assert [p.step for p in points] == [1, 2]
        assert [p.value for p in points] == pytest.approx([float(r[column]) for r in rows])


def test_a_failing_check_with_health_warn_keeps_the_model(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """A margin over the prior that no classifier reaches: flagged, and the model kept."""
    out = tmp_path / "cam/model.pt"
    proc = train_cli(
        tiny_manifest, out, "--epochs", "1", "--health", "warn", "--health-margin", "101"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no better than the trivial prior" in proc.stderr
    assert out.exists()
    verdict = json.loads((tmp_path / "cam/health.json").read_text())
    assert not verdict["healthy"]
    assert verdict["problems"][0]["what"].startswith("held-out val_map is no better")


class BorderNet(nn.Module):
    """A 'CAM network' whose maps sit on the top rows of every image."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.num_classes = num_classes

    def cams(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2] // 4, images.shape[-1] // 4  # a stride-4 map
        maps = torch.zeros(images.shape[0], self.num_classes, h, w)
        maps[:, :, :2] = 1.0
        return maps * self.scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], self.num_classes)


class CentreNet(BorderNet):
    def cams(self, images: torch.Tensor) -> torch.Tensor:
        maps = super().cams(images) * 0
        h, w = maps.shape[-2:]
        maps[:, :, h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 1.0
        return maps


def test_border_peaked_cams_are_flagged(tiny_manifest: Path) -> None:
    manifest = Manifest.load(tiny_manifest)
    check = held_out.classifier(
        manifest.split("val"), manifest.split("train"), len(manifest.classes), size=128
    )
    assert check is not None
    with torch.no_grad():
        border = check.final_checks(BorderNet(len(manifest.classes)))
        centre = check.final_checks(CentreNet(len(manifest.classes)))
    assert [p.what for p in border] == ["CAMs concentrated on the image border"]
    assert centre == []

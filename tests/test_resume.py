"""A workflow killed in the middle of training finishes with --rerun-incomplete, and the
training job resumes from its last epoch checkpoint instead of starting over."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import torch
from test_workflow import snakemake_cmd

EPOCHS = 40
# The CAM training long enough to be killed in the middle.
LONG_TRAINING = {"cam": {"train": {"epochs": EPOCHS}}}


def test_killed_workflow_finishes_and_training_resumes(tmp_path: Path) -> None:
    run = tmp_path / "results/tiny"
    target = "results/tiny/metrics/cam.json"
    state = run / "cam/train-state/last.pt"

    # Kill Snakemake and its jobs at once (SIGKILL to the process group: no clean-up runs,
    # as when a node goes down) as soon as the CAM training has saved an epoch.
    proc = subprocess.Popen(
        snakemake_cmd(tmp_path, target, configs=(LONG_TRAINING,)),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not state.exists():
        assert proc.poll() is None, "the workflow ended before the first epoch was saved"
        assert time.monotonic() < deadline, "no epoch checkpoint after 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "cam/model.pt").exists()
    done = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= done < EPOCHS

    # A killed Snakemake leaves its lock: --unlock, then finish what was left.
    subprocess.run(
        snakemake_cmd(tmp_path, "--unlock", configs=(LONG_TRAINING,)),
        check=True,
        capture_output=True,
    )
    finish = subprocess.run(
        snakemake_cmd(tmp_path, target, "--rerun-incomplete", configs=(LONG_TRAINING,)),
        capture_output=True,
        text=True,
    )
    assert finish.returncode == 0, finish.stderr[-3000:]
    log = (run / "logs/train_cam.log").read_text()
    resumed = re.search(r"resuming from .* after epoch (\d+)", log)
    assert resumed is not None, log[-2000:]
    assert done <= int(resumed[1]) < EPOCHS
    assert torch.load(state, weights_only=True)["epoch"] == EPOCHS
    assert (run / "metrics/cam.json").exists()

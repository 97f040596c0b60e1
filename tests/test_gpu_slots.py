"""GPU slots: concurrent gpu=1 jobs get different devices; a killed job's device is freed.

The machine needs no GPU: WSSS_GPUS names the devices the slots hand out, and each job
records the CUDA_VISIBLE_DEVICES it was given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsss.gpu_slots import claim, try_claim

WSSS = [sys.executable, "-m", "wsss.cli"]


def slot_env(lock_dir: Path, devices: str = "0,1") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(WSSS_GPUS=devices, WSSS_GPU_LOCK_DIR=str(lock_dir))
    return env


def wait_for(path: Path, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.1)
    return path.read_text().strip()


def test_two_concurrent_snakemake_gpu_jobs_get_different_devices(tmp_path: Path) -> None:
    # Each job writes its device and start / end times; both hold their GPU for 3 s.
    (tmp_path / "Snakefile").write_text(
        f"""
rule all:
    input: expand("out/{{i}}.txt", i=range(2))

rule job:
    output: "out/{{i}}.txt"
    resources: gpu=1
    shell:
        "{" ".join(WSSS)} gpu-slot -- sh -c "
        "'echo $CUDA_VISIBLE_DEVICES $(date +%s.%N) > {{output}}.tmp; sleep 3;"
        " echo $(date +%s.%N) >> {{output}}.tmp; mv {{output}}.tmp {{output}}'"
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2"],
        cwd=tmp_path,
        env=slot_env(tmp_path / "locks"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [(tmp_path / f"out/{i}.txt").read_text().split() for i in range(2)]
    devices = sorted(r[0] for r in records)
    assert devices == ["0", "1"]
    (start0, end0), (start1, end1) = [(float(r[1]), float(r[2])) for r in records]
    assert max(start0, start1) < min(end0, end1), "the two jobs did not run at the same time"


def test_killed_job_frees_its_device(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    env = slot_env(locks)

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                *WSSS,
                "gpu-slot",
                "--",
                "sh",
                "-c",
                f"echo $CUDA_VISIBLE_DEVICES > {name}; sleep 120",
            ],
            cwd=tmp_path,
            env=env,
            start_new_session=True,  # its own process group, as a job has
        )

    first = start("first")
    assert wait_for(tmp_path / "first") == "0"
    second = start("second")
    assert wait_for(tmp_path / "second") == "1"
    # Both devices are taken: a third claim finds none free.
    assert try_claim(["0", "1"], locks) is None
    with pytest.raises(TimeoutError, match="no free GPU"):
        claim(["0", "1"], locks, poll_seconds=0.1, timeout_seconds=0.3)

    os.killpg(first.pid, signal.SIGKILL)  # a crash: no clean-up code runs
    first.wait()
    third = start("third")
    try:
        assert wait_for(tmp_path / "third") == "0", "the killed job's device was not reused"
    finally:
        for proc in (second, third):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_waiting_job_gets_the_device_when_it_is_released(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    holder = subprocess.Popen(
        [
            *WSSS,
            "gpu-slot",
            "--",
            "sh",
            "-c",
            "echo held > held; until [ -e release ]; do sleep 0.1; done",
        ],
        cwd=tmp_path,
        env=slot_env(locks, "0"),
    )
    wait_for(tmp_path / "held")
    with open(tmp_path / "waiter.log", "w") as err:
        waiter = subprocess.Popen(
            [*WSSS, "gpu-slot", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES > got"],
            cwd=tmp_path,
            env=slot_env(locks, "0"),
            stderr=err,
        )
        deadline = time.monotonic() + 60
        while "waiting" not in (tmp_path / "waiter.log").read_text():
            assert time.monotonic() < deadline and waiter.poll() is None, "the job did not wait"
            time.sleep(0.1)
        assert not (tmp_path / "got").exists()
        (tmp_path / "release").touch()
        holder.wait(timeout=60)
        assert waiter.wait(timeout=60) == 0
    assert (tmp_path / "got").read_text().strip() == "0"


def test_no_claim_where_devices_are_already_assigned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under SLURM, gres sets CUDA_VISIBLE_DEVICES: the job keeps what it was given.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert claim(["0", "1"], tmp_path) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    # No GPU at all: nothing to claim, the job runs on the CPU.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert claim([], tmp_path) is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpu_slot_without_a_command_is_an_error() -> None:
    proc = subprocess.run([*WSSS, "gpu-slot"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "needs a command" in proc.stderr


@pytest.mark.parametrize(("device", "claims"), [("auto", True), ("cuda", True), ("cpu", False)])
def test_every_stage_command_claims_a_slot_unless_told_cpu(
    tmp_path: Path, device: str, claims: bool
) -> None:
    # The slot is claimed before the stage starts (here it then fails: no checkpoint).
    proc = subprocess.run(
        [
            *WSSS,
            "predict",
            "--model",
            str(tmp_path / "missing.pt"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--device",
            device,
        ],
        env=slot_env(tmp_path / "locks", "5"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "missing.pt" in proc.stderr
    assert ("GPU: claimed device 5" in proc.stderr) is claims

"""GPU slots: concurrent gpu=1 jobs get different devices; a killed job's device is freed.

The machine needs no GPU: WSSS_GPUS, an existing CUDA_VISIBLE_DEVICES or a fake nvidia-smi
on PATH names the devices the slots hand out, and each job records the
CUDA_VISIBLE_DEVICES it was given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsss.workflow import gpu_slots
from wsss.workflow.gpu_slots import claim, parse_nvidia_smi, parse_visible, try_claim

WSSS = [sys.executable, "-m", "wsss.cli"]


CLEARED = ("CUDA_VISIBLE_DEVICES", "WSSS_GPUS", "WSSS_GPU_SLOT", "WSSS_JOBS_PER_GPU")


def slot_env(lock_dir: Path, devices: str | None = "0,1", **extra: str) -> dict[str, str]:
    """The environment of a job: slots from WSSS_GPUS=``devices`` (None: not set), locks in
    ``lock_dir``, and ``extra`` (CUDA_VISIBLE_DEVICES, PATH, ...)."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env["WSSS_GPU_LOCK_DIR"] = str(lock_dir)
    if devices is not None:
        env["WSSS_GPUS"] = devices
    env.update(extra)
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


def test_no_claim_without_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU at all: nothing to claim, the job runs on the CPU.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("WSSS_GPU_SLOT", raising=False)
    assert claim([], tmp_path) is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    # A CUDA_VISIBLE_DEVICES that names no device (SLURM's NoDevFiles, -1) is kept as it is.
    for value in ("NoDevFiles", "-1", ""):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        monkeypatch.delenv("WSSS_GPUS", raising=False)
        assert claim(lock_dir=tmp_path) is None
        assert os.environ["CUDA_VISIBLE_DEVICES"] == value
    # WSSS_GPUS empty: no slots at all, an existing CUDA_VISIBLE_DEVICES left alone.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("WSSS_GPUS", "")
    assert claim(lock_dir=tmp_path) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"


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
    assert proc.returncode == 3 and "missing.pt" in proc.stderr  # an input error
    assert ("GPU: claimed device 5" in proc.stderr) is claims


# ---- which devices the slots share out ----------------------------------------------------

UUID_A = "GPU-11111111-2222-3333-4444-555555555555"
UUID_B = "GPU-66666666-7777-8888-9999-aaaaaaaaaaaa"
MIG_1 = "MIG-0a0b0c0d-0000-5111-8222-333333333333"
MIG_2 = "MIG-1a1b1c1d-0000-5111-8222-333333333333"


def test_cuda_visible_devices_entries_are_read_as_cuda_reads_them() -> None:
    assert parse_visible("3,5") == ["3", "5"]
    assert parse_visible(" 3 , 5 ,3") == ["3", "5"]
    assert parse_visible(f"{UUID_B},{UUID_A}") == [UUID_B, UUID_A]  # its own order
    assert parse_visible(f"{MIG_2},{MIG_1}") == [MIG_2, MIG_1]
    legacy_mig = f"MIG-{UUID_A}/1/0"
    assert parse_visible(legacy_mig) == [legacy_mig]
    # CUDA ignores an invalid entry and everything after it.
    assert parse_visible("2,NoDevFiles,4") == ["2"]
    assert parse_visible("NoDevFiles") == parse_visible("-1") == parse_visible("") == []


def holder(tmp_path: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    """``wsss gpu-slot`` holding its device until the file ``release`` appears; writes the
    CUDA_VISIBLE_DEVICES it got to ``name``."""
    return subprocess.Popen(
        [*WSSS, "gpu-slot", "--", "sh", "-c",
         f"echo $CUDA_VISIBLE_DEVICES > {name}; until [ -e release ]; do sleep 0.1; done"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def hold_all(tmp_path: Path, env: dict[str, str], count: int) -> list[str]:
    """Start ``count`` holders one after the other; the devices they got, in order."""
    for name in ["release"] + [f"job{i}" for i in range(count)]:
        (tmp_path / name).unlink(missing_ok=True)
    procs, got = [], []
    try:
        for i in range(count):
            procs.append(holder(tmp_path, f"job{i}", env))
            got.append(wait_for(tmp_path / f"job{i}"))
    finally:
        (tmp_path / "release").touch()
        for proc in procs:
            assert proc.wait(timeout=60) == 0, proc.stderr.read()
    return got


@pytest.mark.parametrize(
    "visible",
    ["3,5", f"{UUID_B},{UUID_A}", f"{MIG_2},{MIG_1}"],
    ids=["indices", "uuids", "mig"],
)
def test_an_existing_cuda_visible_devices_is_shared_out_in_its_order(
    tmp_path: Path, visible: str
) -> None:
    # A SLURM allocation or a user gave this run two devices: one each, in the list's order.
    env = slot_env(tmp_path / "locks", None, CUDA_VISIBLE_DEVICES=visible)
    assert hold_all(tmp_path, env, 2) == visible.split(",")


def test_two_snakemake_gpu_jobs_in_an_allocation_of_two_devices(tmp_path: Path) -> None:
    """CUDA_VISIBLE_DEVICES=3,5 set around the whole run: the two concurrent gpu=1 jobs get
    3 and 5 (before, both ran on the first device of the list)."""
    (tmp_path / "Snakefile").write_text(
        f"""
rule all:
    input: expand("out/{{i}}.txt", i=range(2))

rule job:
    output: "out/{{i}}.txt"
    resources: gpu=1
    shell:
        "{" ".join(WSSS)} gpu-slot -- sh -c "
        "'echo $CUDA_VISIBLE_DEVICES > {{output}}.tmp; sleep 2; mv {{output}}.tmp {{output}}'"
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2"],
        cwd=tmp_path,
        env=slot_env(tmp_path / "locks", None, CUDA_VISIBLE_DEVICES="3,5"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    devices = sorted((tmp_path / f"out/{i}.txt").read_text().strip() for i in range(2))
    assert devices == ["3", "5"]


def test_more_jobs_than_devices_wait_or_share_when_allowed(tmp_path: Path) -> None:
    env = slot_env(tmp_path / "locks", None, CUDA_VISIBLE_DEVICES="3,5")
    jobs = [holder(tmp_path, f"job{i}", env) for i in range(2)]
    try:
        assert sorted(wait_for(tmp_path / f"job{i}") for i in range(2)) == ["3", "5"]
        third = holder(tmp_path, "job2", env)
        jobs.append(third)
        deadline = time.monotonic() + 60
        err = ""
        while "waiting" not in err:  # the third job waits for a device...
            assert time.monotonic() < deadline and third.poll() is None, err
            err += third.stderr.readline()
        assert not (tmp_path / "job2").exists()
        first = (tmp_path / "job0").read_text().strip()
        os.killpg(jobs[0].pid, signal.SIGKILL)  # ...and gets the first one's when it ends
        jobs[0].wait()
        assert wait_for(tmp_path / "job2") == first
    finally:
        (tmp_path / "release").touch()
        for proc in jobs:
            proc.wait(timeout=60)

    # WSSS_JOBS_PER_GPU=2: four jobs on two devices, spread over both before sharing.
    locks = tmp_path / "locks2"
    held = [try_claim(["3", "5"], locks, per_device=2) for _ in range(4)]
    assert [slot.device for slot in held if slot] == ["3", "5", "3", "5"]
    assert try_claim(["3", "5"], locks, per_device=2) is None
    for slot in held:
        slot.handle.close()
    env = slot_env(tmp_path / "locks3", None, CUDA_VISIBLE_DEVICES="3,5", WSSS_JOBS_PER_GPU="2")
    assert hold_all(tmp_path, env, 4) == ["3", "5", "3", "5"]


def test_a_wsss_command_under_gpu_slot_keeps_its_parents_device(tmp_path: Path) -> None:
    # The inner command would otherwise wait for ever on the lock its own parent holds.
    proc = subprocess.run(
        [*WSSS, "gpu-slot", "--", *WSSS, "gpu-slot", "--", "sh", "-c",
         "echo $CUDA_VISIBLE_DEVICES"],
        env=slot_env(tmp_path / "locks", None, CUDA_VISIBLE_DEVICES="3,5"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"
    assert "held by this job's slot" in proc.stderr


SMI_LIST = f"""\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: {UUID_A})
GPU 1: NVIDIA A100-SXM4-40GB (UUID: {UUID_B})
  MIG 3g.20gb     Device  0: (UUID: {MIG_1})
  MIG 3g.20gb     Device  1: (UUID: {MIG_2})
"""
# GPU 0 sits on a later PCI bus than GPU 1.
SMI_BUS_IDS = f"{UUID_A}, 00000000:81:00.0\n{UUID_B}, 00000000:3B:00.0\n"


def fake_nvidia_smi(bin_dir: Path) -> None:
    """An ``nvidia-smi`` that answers ``-L`` and ``--query-gpu=uuid,pci.bus_id``."""
    bin_dir.mkdir()
    (bin_dir / "list.txt").write_text(SMI_LIST)
    (bin_dir / "bus.txt").write_text(SMI_BUS_IDS)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f'  -L) cat "{bin_dir}/list.txt" ;;\n'
        f'  *query-gpu=uuid,pci.bus_id*) cat "{bin_dir}/bus.txt" ;;\n'
        "  *) exit 1 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)


def test_without_cuda_visible_devices_every_device_in_pci_order_by_uuid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("WSSS_GPUS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # The MIG instances stand for their GPU, which comes first by bus id.
    expected = [MIG_1, MIG_2, UUID_A]
    assert gpu_slots.machine_devices() == expected
    assert gpu_slots.visible_devices() == (expected, "nvidia-smi")
    # nvidia-smi's listing order where the bus ids are missing.
    assert parse_nvidia_smi(SMI_LIST) == [UUID_A, MIG_1, MIG_2]
    env = slot_env(tmp_path / "locks", None, PATH=os.environ["PATH"])
    assert hold_all(tmp_path, env, 3) == expected
    names = sorted(p.name for p in (tmp_path / "locks").iterdir())
    assert names == sorted(f"gpu{d}.lock" for d in expected)


def test_locks_of_a_slurm_allocation_are_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two SLURM jobs on one node may both be given device 0 (indices relative to each
    job's cgroup): their locks live apart, so neither waits for the other."""
    monkeypatch.delenv("WSSS_GPU_LOCK_DIR", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    base = gpu_slots.default_lock_dir("nvidia-smi")
    assert gpu_slots.default_lock_dir("CUDA_VISIBLE_DEVICES") == base / "slurm-job-4242"
    monkeypatch.setenv("WSSS_GPU_LOCK_DIR", str(tmp_path))
    assert gpu_slots.default_lock_dir("CUDA_VISIBLE_DEVICES") == tmp_path

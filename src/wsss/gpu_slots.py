"""One GPU per job when several jobs run at once on one machine.

Snakemake counts GPUs (``--resources gpu=2`` lets two ``gpu=1`` jobs run together) but
does not say which device each job gets. Every job that may use a GPU therefore claims a
*slot* before CUDA starts: an exclusive ``flock`` on one lock file per device, then
``CUDA_VISIBLE_DEVICES`` set to that device. The lock belongs to the job's open file, so
the kernel releases it when the process ends, however it ends: a crashed or killed job
frees its device at once, and no stale lock file needs cleaning up.

Environment:
    WSSS_GPUS            devices the slots hand out, comma-separated (default: every GPU
                         that ``nvidia-smi -L`` lists)
    WSSS_GPU_LOCK_DIR    where the lock files live (default: /tmp/wsss-gpu-locks-<uid>);
                         one directory per machine, shared by every workflow on it

No slot is claimed where ``CUDA_VISIBLE_DEVICES`` is already set (by SLURM's gres, or by the
user) or where the machine has no GPU: the job then runs as it would have anyway.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

DEVICES_ENV = "WSSS_GPUS"
LOCK_DIR_ENV = "WSSS_GPU_LOCK_DIR"

# Slots held by this process: kept referenced so the lock lives as long as the process.
_held: list[Slot] = []


@dataclass
class Slot:
    """A claimed device: ``device`` is the id written to CUDA_VISIBLE_DEVICES."""

    device: str
    lock_file: Path
    handle: IO[str]


def default_lock_dir() -> Path:
    return Path(
        os.environ.get(LOCK_DIR_ENV)
        or Path(tempfile.gettempdir()) / f"wsss-gpu-locks-{os.getuid()}"
    )


def machine_devices() -> list[str]:
    """The device ids slots are made of: ``$WSSS_GPUS``, else those ``nvidia-smi -L`` lists.

    Counting goes through nvidia-smi rather than torch, because initialising CUDA would fix
    the visible devices before ``CUDA_VISIBLE_DEVICES`` could be set.
    """
    listed = os.environ.get(DEVICES_ENV)
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def try_claim(devices: list[str], lock_dir: Path) -> Slot | None:
    """Lock the first free device of ``devices``; None when all are taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        path = lock_dir / f"gpu{device}.lock"
        handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return Slot(device, path, handle)
    return None


def claim(
    devices: list[str] | None = None,
    lock_dir: Path | None = None,
    poll_seconds: float = 2.0,
    timeout_seconds: float | None = None,
) -> Slot | None:
    """Claim a free GPU for this process and set ``CUDA_VISIBLE_DEVICES`` to it.

    Returns None without claiming when CUDA_VISIBLE_DEVICES is already set or there is no
    GPU. Waits (polling every ``poll_seconds``) while every device is taken, which happens
    when more ``gpu=1`` jobs run than the machine has GPUs; raises TimeoutError after
    ``timeout_seconds`` (None: wait for ever). Must run before CUDA is initialised.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        log.info("GPU: CUDA_VISIBLE_DEVICES=%s already set", os.environ["CUDA_VISIBLE_DEVICES"])
        return None
    devices = machine_devices() if devices is None else devices
    if not devices:
        return None
    lock_dir = default_lock_dir() if lock_dir is None else lock_dir
    start = time.monotonic()
    waiting_logged = False
    while (slot := try_claim(devices, lock_dir)) is None:
        if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
            raise TimeoutError(f"no free GPU among {devices} (locks in {lock_dir})")
        if not waiting_logged:
            log.info("GPU: all of %s are in use (locks in %s); waiting", devices, lock_dir)
            waiting_logged = True
        time.sleep(poll_seconds)
    os.environ["CUDA_VISIBLE_DEVICES"] = slot.device
    _held.append(slot)
    log.info("GPU: claimed device %s (lock %s)", slot.device, slot.lock_file)
    return slot


def exec_on_slot(command: list[str]) -> None:
    """Claim a slot, then replace this process by ``command``, which keeps the lock."""
    slot = claim()
    if slot is not None:
        os.set_inheritable(slot.handle.fileno(), True)
    os.execvp(command[0], command)

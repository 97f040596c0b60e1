"""One GPU per job when several jobs run at once on one machine or in one allocation.

Snakemake counts GPUs (``--resources gpu=2`` lets two ``gpu=1`` jobs run together) but
does not say which device each job gets. Every job that may use a GPU therefore claims a
*slot* before CUDA starts: an exclusive ``flock`` on one lock file per slot, then
``CUDA_VISIBLE_DEVICES`` set to that slot's device. The lock belongs to the job's open file,
so the kernel releases it when the process ends, however it ends: a crashed or killed job
frees its device at once, and no stale lock file needs cleaning up.

Which devices the slots share out (the first that applies):

1. ``WSSS_GPUS``, comma-separated, written to ``CUDA_VISIBLE_DEVICES`` as they are (an empty
   value: no slots, the job keeps the environment it was given);
2. ``CUDA_VISIBLE_DEVICES`` when it is already set (by SLURM's gres for an allocation, by a
   scheduler, by the user): its entries (indices, ``GPU-<uuid>``, ``MIG-<uuid>``), in its own
   order, each job getting one of them. CUDA stops reading the list at the first entry it
   does not understand (``NoDevFiles``, ``-1``), and so do the slots;
3. every device ``nvidia-smi`` lists, in PCI bus order (the order CUDA uses with
   ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, and nvidia-smi's own), each handed out by its UUID:
   a GPU by its ``GPU-<uuid>``, a GPU split into MIG instances by each instance's
   ``MIG-<uuid>`` (a MIG-enabled GPU itself cannot run CUDA work). A UUID names one device
   whatever ``CUDA_DEVICE_ORDER`` the job uses, so the job gets exactly the locked device.

Environment:
    WSSS_GPUS            the devices the slots hand out (see above)
    WSSS_JOBS_PER_GPU    jobs that may share one device (default 1; e.g. 2 on a large GPU
                         for small jobs): slots are spread over the devices first
    WSSS_GPU_LOCK_DIR    where the lock files live (default: /tmp/wsss-gpu-locks-<uid>, with
                         a sub-folder per SLURM job when the devices come from a SLURM
                         allocation, whose indices are relative to that job)

A lock file is named after its device entry as written (``gpu3.lock``,
``gpuGPU-<uuid>.lock``; ``gpu3.1.lock`` for the second job on a shared device), so runs that
should exclude each other must spell their devices alike (one run always does). A process
that holds a slot marks it in ``WSSS_GPU_SLOT``; a ``wsss`` command it starts (``wsss
gpu-slot -- wsss ...``) keeps that device instead of waiting for its own parent's lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
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
PER_DEVICE_ENV = "WSSS_JOBS_PER_GPU"
HELD_ENV = "WSSS_GPU_SLOT"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"

# Slots held by this process: kept referenced so the lock lives as long as the process.
_held: list[Slot] = []

_ENTRY = re.compile(r"^(\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+)$")
_GPU_LINE = re.compile(r"^GPU\s+(\d+):.*\(UUID:\s*(GPU-[0-9A-Fa-f-]+)\)")
_MIG_LINE = re.compile(r"^\s+MIG\b.*\(UUID:\s*(MIG-[0-9A-Za-z/-]+)\)")


@dataclass
class Slot:
    """A claimed device: ``device`` is the entry written to CUDA_VISIBLE_DEVICES."""

    device: str
    lock_file: Path
    handle: IO[str]


def parse_visible(value: str) -> list[str]:
    """The devices a ``CUDA_VISIBLE_DEVICES`` value names, in its order, as CUDA reads it:
    indices, ``GPU-<uuid>`` and ``MIG-<uuid>`` entries, up to the first entry that is none
    of these (CUDA ignores the rest); duplicates once."""
    devices: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not _ENTRY.match(entry):
            if entry:
                log.debug(
                    "GPU: %s=%s: entries from %r on are not devices", VISIBLE_ENV, value, entry
                )
            break
        if entry not in devices:
            devices.append(entry)
    return devices


def parse_nvidia_smi(listing: str, bus_ids: dict[str, str] | None = None) -> list[str]:
    """The CUDA devices of an ``nvidia-smi -L`` listing: each GPU's UUID, or the UUIDs of its
    MIG instances where it has some, the GPUs in PCI bus order when ``bus_ids`` (GPU UUID ->
    bus id, from ``--query-gpu=uuid,pci.bus_id``) has them all, else in the listing's."""
    gpus: list[tuple[int, str, list[str]]] = []
    for line in listing.splitlines():
        if m := _GPU_LINE.match(line):
            gpus.append((int(m.group(1)), m.group(2), []))
        elif (m := _MIG_LINE.match(line)) and gpus:
            gpus[-1][2].append(m.group(1))
    if bus_ids and all(uuid in bus_ids for _, uuid, _ in gpus):
        gpus.sort(key=lambda g: _bus_key(bus_ids[g[1]]))
    return [dev for _, uuid, migs in gpus for dev in (migs or [uuid])]


def _bus_key(bus_id: str) -> tuple[int, ...]:
    """``00000000:3B:00.0`` -> (0, 0x3B, 0, 0), for sorting."""
    parts = re.split(r"[:.]", bus_id.strip())
    try:
        return tuple(int(p, 16) for p in parts)
    except ValueError:
        return (1 << 62,)


def _nvidia_smi(*args: str) -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, *args], capture_output=True, text=True, timeout=30, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout


def machine_devices() -> list[str]:
    """Every CUDA device of this machine by UUID, in PCI bus order (MIG instances in place
    of their GPU); empty without ``nvidia-smi``.

    Counting goes through nvidia-smi rather than torch, because initialising CUDA would fix
    the visible devices before ``CUDA_VISIBLE_DEVICES`` could be set.
    """
    listing = _nvidia_smi("-L")
    if listing is None:
        return []
    query = _nvidia_smi("--query-gpu=uuid,pci.bus_id", "--format=csv,noheader")
    bus_ids = {}
    for line in (query or "").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2:
            bus_ids[fields[0]] = fields[1]
    return parse_nvidia_smi(listing, bus_ids)


def visible_devices() -> tuple[list[str], str]:
    """(the devices slots are made of, where they come from): ``WSSS_GPUS``, else an
    existing ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``."""
    listed = os.environ.get(DEVICES_ENV)
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()], DEVICES_ENV
    visible = os.environ.get(VISIBLE_ENV)
    if visible is not None:
        return parse_visible(visible), VISIBLE_ENV
    return machine_devices(), "nvidia-smi"


def jobs_per_device() -> int:
    value = os.environ.get(PER_DEVICE_ENV, "1").strip() or "1"
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{PER_DEVICE_ENV}={value!r}: not a whole number") from None
    if count < 1:
        raise ValueError(f"{PER_DEVICE_ENV}={value!r}: must be at least 1")
    return count


def default_lock_dir(source: str | None = None) -> Path:
    """``$WSSS_GPU_LOCK_DIR``, else /tmp/wsss-gpu-locks-<uid>; for devices taken from
    ``CUDA_VISIBLE_DEVICES`` inside a SLURM job, a sub-folder of that job (its indices are
    relative to the job's allocation: two jobs on one node may both be given ``0``)."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    base = Path(tempfile.gettempdir()) / f"wsss-gpu-locks-{os.getuid()}"
    job = os.environ.get("SLURM_JOB_ID")
    if source == VISIBLE_ENV and job:
        return base / f"slurm-job-{job}"
    return base


def slots_of(devices: list[str], per_device: int = 1) -> list[tuple[str, str]]:
    """(device, lock file name) of each slot: every device once, then every device a second
    time, ... (``per_device`` rounds), so jobs spread over the devices before sharing."""
    slots = []
    for share in range(per_device):
        for device in devices:
            name = device.replace("/", "_")
            slots.append((device, f"gpu{name}.lock" if share == 0 else f"gpu{name}.{share}.lock"))
    return slots


def try_claim(devices: list[str], lock_dir: Path, per_device: int = 1) -> Slot | None:
    """Lock the first free slot of ``devices``; None when all are taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for device, name in slots_of(devices, per_device):
        path = lock_dir / name
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
    per_device: int | None = None,
) -> Slot | None:
    """Claim a free slot for this process and set ``CUDA_VISIBLE_DEVICES`` to its device.

    ``devices``: the devices to share out (default: :func:`visible_devices`). Returns None
    without claiming where there is no device, or where this process or the one that
    started it already holds the slot of the current ``CUDA_VISIBLE_DEVICES``. Waits
    (polling every ``poll_seconds``) while every slot is taken, which happens when more
    ``gpu=1`` jobs run than there are slots; raises TimeoutError after ``timeout_seconds``
    (None: wait for ever). Must run before CUDA is initialised.
    """
    held = os.environ.get(HELD_ENV)
    if held is not None and held == os.environ.get(VISIBLE_ENV):
        log.info("GPU: device %s, held by this job's slot", held)
        return None
    source = "given"
    if devices is None:
        devices, source = visible_devices()
    if not devices:
        if os.environ.get(VISIBLE_ENV) is not None:
            log.info(
                "GPU: %s=%s kept (no devices to share out)", VISIBLE_ENV, os.environ[VISIBLE_ENV]
            )
        return None
    per_device = jobs_per_device() if per_device is None else per_device
    lock_dir = default_lock_dir(source) if lock_dir is None else lock_dir
    start = time.monotonic()
    waiting_logged = False
    while (slot := try_claim(devices, lock_dir, per_device)) is None:
        if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
            raise TimeoutError(f"no free GPU among {devices} (locks in {lock_dir})")
        if not waiting_logged:
            log.info("GPU: all of %s are in use (locks in %s); waiting", devices, lock_dir)
            waiting_logged = True
        time.sleep(poll_seconds)
    os.environ[VISIBLE_ENV] = slot.device
    os.environ[HELD_ENV] = slot.device
    _held.append(slot)
    log.info(
        "GPU: claimed device %s of %s from %s (lock %s)",
        slot.device,
        ",".join(devices),
        source,
        slot.lock_file,
    )
    return slot


def exec_on_slot(command: list[str]) -> None:
    """Claim a slot, then replace this process by ``command``, which keeps the lock."""
    slot = claim()
    if slot is not None:
        os.set_inheritable(slot.handle.fileno(), True)
    os.execvp(command[0], command)

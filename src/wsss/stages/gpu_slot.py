"""Stage: run any command on a free GPU of this machine, the slot every GPU stage claims
(:mod:`wsss.gpu_slots`)."""

from __future__ import annotations

from dataclasses import dataclass

from wsss.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    cmd: tuple[str, ...] = arg((), "the command and its arguments (after --)", remainder=True)


def run(io: IO, params: None = None) -> None:
    """Replace this process by ``io.cmd`` with ``CUDA_VISIBLE_DEVICES`` set to a free GPU."""
    from wsss.gpu_slots import exec_on_slot

    cmd = list(io.cmd[1:] if io.cmd[:1] == ("--",) else io.cmd)
    if not cmd:
        raise ValueError("gpu-slot needs a command to run, e.g. wsss gpu-slot -- nvidia-smi")
    exec_on_slot(cmd)


STAGE = Stage("gpu-slot", "run a command on a free GPU of this machine", IO, None, run)

"""Stage: run any command on a free GPU, the slot every GPU stage claims
(:mod:`wsss.workflow.gpu_slots`): one of ``$WSSS_GPUS``, of an existing ``$CUDA_VISIBLE_DEVICES``
(a SLURM allocation's), or of the devices ``nvidia-smi`` lists."""

from __future__ import annotations

from dataclasses import dataclass

from wsss.core.stage import Stage, arg


@dataclass(frozen=True, kw_only=True)
class IO:
    cmd: tuple[str, ...] = arg((), "the command and its arguments (after --)", remainder=True)


def run(io: IO, params: None = None) -> None:
    """Replace this process by ``io.cmd`` with ``CUDA_VISIBLE_DEVICES`` set to a free GPU."""
    from wsss.core.errors import UsageError
    from wsss.workflow.gpu_slots import exec_on_slot

    cmd = list(io.cmd[1:] if io.cmd[:1] == ("--",) else io.cmd)
    if not cmd:
        raise UsageError("gpu-slot needs a command to run, e.g. wsss gpu-slot -- nvidia-smi")
    exec_on_slot(cmd)


STAGE = Stage(
    "gpu-slot", "run a command on a free GPU of this machine or allocation", IO, None, run
)

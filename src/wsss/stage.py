"""The stage interface: every ``wsss <command>`` is one module of :mod:`wsss.stages` that
declares itself once::

    STAGE = Stage("infer-cam", "CAMs of one shard into HDF5", IO, Params, run)

- ``IO``: a frozen dataclass of what the stage reads and writes (paths, split, shard,
  device). The workflow's rules fill it.
- ``Params``: a frozen dataclass of the method's settings, or ``None``. The config's
  sections fill it; its defaults are the reference ones.
- ``run(io, params)``: does the work.

Every field is declared with :func:`arg` (help text, choices); :mod:`wsss.cli` turns the
fields into flags. A stage module imports only the standard library and this package's
light modules at the top; torch and other heavy libraries are imported inside ``run``, so
``wsss --help`` answers at once. Stages never import each other: what several stages share
lives in :mod:`wsss.common` (helpers) and :mod:`wsss.settings` (shared settings).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One command: its name on the command line, a one-line help, its dataclasses, its run."""

    name: str
    help: str
    io: type
    params: type | None
    run: Callable[[Any, Any], object]


def arg(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    positional: bool = False,
    remainder: bool = False,
) -> Any:
    """A dataclass field with its command-line help (and choices, when there are few).

    A field without ``default`` is a required flag; ``positional`` makes it an argument
    without a flag; ``remainder`` takes the rest of the command line (``gpu-slot``).
    """
    metadata = {"help": help, "choices": choices, "positional": positional, "remainder": remainder}
    return dataclasses.field(default=default, metadata=metadata)


def registry() -> dict[str, Stage]:
    """Every stage of :mod:`wsss.stages`, by command name, in module-name order."""
    import wsss.stages

    found: dict[str, Stage] = {}
    for info in sorted(pkgutil.iter_modules(wsss.stages.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"wsss.stages.{info.name}")
        stage = getattr(module, "STAGE", None)
        if not isinstance(stage, Stage):
            raise TypeError(f"wsss.stages.{info.name} declares no STAGE")
        if stage.name in found:
            raise ValueError(f"two stages are named '{stage.name}'")
        found[stage.name] = stage
    return found

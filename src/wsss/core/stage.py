"""The stage interface: every ``wsss <command>`` is one module of :mod:`wsss.stages` that
declares itself once::

    STAGE = Stage("infer-cam", "CAMs of one shard into HDF5", IO, Params, run,
                  section="cam.infer")

- ``IO``: a frozen dataclass of what the stage reads and writes (paths, split, shard,
  device). The workflow's rules fill it.
- ``Params``: a frozen dataclass of the method's settings, or ``None``. The config's
  sections fill it; its defaults are the reference ones.
- ``run(io, params)``: does the work.
- ``section``: the config section whose keys fill ``Params`` in the workflow (``cam.infer``),
  or ``None`` for a tool the workflow does not configure.

Every field is declared with :func:`arg` (help text, choices, bounds); :mod:`wsss.cli` turns
the fields into flags, :mod:`wsss.config_schema` the ``Params`` of every stage with a section
into that section of the workflow's config schema, so that a setting's name, type, default,
bounds and help are written once.

A stage module imports only the standard library and this package's light modules at the
top; torch and other heavy libraries are imported inside ``run``, so ``wsss --help``
answers at once. Stages never import each other: what several stages share
lives in :mod:`wsss.jobs` (helpers) and :mod:`wsss.core.settings` (shared settings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One command: its name on the command line, a one-line help, its dataclasses, its run,
    and the config section that configures it in the workflow."""

    name: str
    help: str
    io: type
    params: type | None
    run: Callable[[Any, Any], object]
    section: str | None = None


def arg(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    positional: bool = False,
    remainder: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    multiple_of: int | None = None,
    items: dict[str, float] | None = None,
    min_items: int | None = None,
    configurable: bool = True,
) -> Any:
    """A dataclass field with its command-line help (and choices, when there are few).

    A field without ``default`` is a required flag; ``positional`` makes it an argument
    without a flag; ``remainder`` takes the rest of the command line (``gpu-slot``).
    The bounds are those of the config schema (JSON Schema): ``minimum`` / ``maximum``
    inclusive, ``above`` exclusive, ``multiple_of``; for a tuple, ``items`` bounds each
    element (JSON Schema keywords: ``{"exclusiveMinimum": 0}``) and ``min_items`` its length.
    ``configurable=False``: a ``Params`` field that the workflow's rule sets, not a key of
    the stage's config section.
    """
    bounds = {
        "minimum": minimum,
        "maximum": maximum,
        "exclusiveMinimum": above,
        "multipleOf": multiple_of,
        "minItems": min_items,
    }
    metadata = {
        "help": help,
        "choices": choices,
        "positional": positional,
        "remainder": remainder,
        "bounds": {k: v for k, v in bounds.items() if v is not None},
        "items": dict(items or {}),
        "configurable": configurable,
    }
    return dataclasses.field(default=default, metadata=metadata)

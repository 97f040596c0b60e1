"""``wsss <command> ...``: one subcommand per stage of :mod:`wsss.stages`, built from the
stage's IO and Params dataclasses (:mod:`wsss.core.stage`): every field is a flag with its help,
its default and, where there are few, its choices."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Sequence

from wsss.core.stage import Stage
from wsss.stages import registry


def _field_type(hint: object) -> tuple[type, bool, bool]:
    """(item type, is a tuple, is optional) of a field's type hint."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint, optional = args[0], True
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional  # type: ignore[return-value]


def add_fields(parser: argparse._ActionsContainer, cls: type) -> None:
    """One option per field of the dataclass ``cls`` (``--field-name``)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        item, many, _ = _field_type(hints[field.name])
        required = field.default is dataclasses.MISSING
        default = None if required else field.default
        kwargs: dict = {"help": meta.get("help", "")}
        if meta.get("choices"):
            kwargs["choices"] = list(meta["choices"])
        if not required and not meta.get("remainder") and default not in ((), None):
            shown = " ".join(map(str, default)) if many else default
            kwargs["help"] += f" (default: {shown})"
        if meta.get("remainder"):
            parser.add_argument(field.name, nargs=argparse.REMAINDER, **kwargs)
            continue
        if meta.get("positional"):
            parser.add_argument(field.name, type=item, **kwargs)
            continue
        flag = "--" + field.name.replace("_", "-")
        if item is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, **kwargs
            )
        elif many:
            parser.add_argument(
                flag,
                type=item,
                nargs="+" if required else "*",
                default=default,
                required=required,
                metavar=item.__name__.upper(),
                **kwargs,
            )
        else:
            parser.add_argument(flag, type=item, default=default, required=required, **kwargs)


def values_of(cls: type, args: argparse.Namespace) -> object:
    """The dataclass ``cls`` filled from parsed ``args``."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        if _field_type(hints[field.name])[1] and value is not None:
            value = tuple(value)
        values[field.name] = value
    return cls(**values)


def _version() -> str:
    """The installed package's version (its metadata, from pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wsss")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser(stages: dict[str, Stage] | None = None) -> argparse.ArgumentParser:
    """The ``wsss`` parser: a subcommand per stage."""
    from wsss.core.errors import EXIT_CODES_HELP

    parser = argparse.ArgumentParser(
        prog="wsss",
        description="Weakly-supervised semantic segmentation from image-level labels: one\n"
        "command per pipeline stage ('wsss COMMAND --help' lists its flags and defaults).",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    parser.add_argument(
        "--version", action="version", version=f"wsss {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in (stages or registry()).values():
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        p.set_defaults(_stage=stage)
        add_fields(p.add_argument_group("inputs and outputs"), stage.io)
        if stage.params is not None:
            add_fields(p.add_argument_group("settings"), stage.params)
    return parser


# GNU OpenMP's waiting threads spin about 300,000 times before they sleep; two jobs on the
# same cores then spin on the cores the other needs (two CAM trainings on 2 cores: 3-4.6x
# their time alone; with 10,000: 1.9-2.3x, and about 11 % slower alone, within the runs'
# noise; docs/benchmarks.md, "Speed").
SPIN_COUNT = "10000"


def share_cores(environ: typing.MutableMapping[str, str]) -> None:
    """A short OpenMP spin (``GOMP_SPINCOUNT``) unless the environment chooses its own wait
    (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``); set before torch loads OpenMP."""
    if "GOMP_SPINCOUNT" not in environ and "OMP_WAIT_POLICY" not in environ:
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT


# glibc's malloc hands a freed block above its mmap threshold (at most 32 MB) back to the
# kernel, so every training step maps its large activations afresh and the kernel zeroes
# them page by page. Keeping them halves a demo CAM training's page faults and cuts its
# system time from 2.9 to 1.7 s of about 51 s of CPU time (idle, 2 cores; the step time is
# the same within noise, the peak 150 MB higher: docs/benchmarks.md, "Speed"). mallopt's
# parameters (malloc.h):
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_FREED = 1 << 30  # bytes of free memory at the heap's top kept before it is trimmed


def keep_freed_memory(environ: typing.Mapping[str, str]) -> bool:
    """Let glibc's malloc keep freed memory for reuse (no blocks mapped apart from the heap,
    the heap's top trimmed only above ``KEEP_FREED``) unless the environment tunes malloc
    itself (``GLIBC_TUNABLES`` or a ``MALLOC_*`` variable); True when it was set. A no-op
    where the C library has no ``mallopt`` (not glibc). Freed memory then stays with the
    process: its resident size is its peak, which a training reaches every step anyway."""
    if "GLIBC_TUNABLES" in environ or any(key.startswith("MALLOC_") for key in environ):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_FREED) == 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run the stage, and turn expected errors into one line on stderr, with the
    exit code of their kind (:mod:`wsss.core.errors`: 2 usage, 3 input, 4 training health)."""
    import os

    share_cores(os.environ)
    keep_freed_memory(os.environ)
    args = build_parser().parse_args(argv)
    stage: Stage = args._stage
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from wsss.core.errors import EXIT_INTERRUPTED, exit_code

    io = values_of(stage.io, args)
    params = values_of(stage.params, args) if stage.params is not None else None
    try:
        if getattr(io, "device", "cpu") != "cpu":
            # Before CUDA starts: one free GPU per job when several run at once.
            from wsss.workflow.gpu_slots import claim

            claim()
        stage.run(io, params)
        sys.stdout.flush()  # a reader that stopped early (wsss inspect F | head) shows here
    except BrokenPipeError:
        # The reader of the output went away: stop quietly, with nothing left to flush.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"wsss {stage.name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        code = exit_code(err)
        if code is None:
            raise
        if args.verbose:
            import traceback

            traceback.print_exc()
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"wsss {stage.name}: error: {message}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())

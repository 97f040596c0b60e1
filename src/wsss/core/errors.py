"""Errors that ``wsss`` reports as one line (``wsss <stage>: error: ...``) besides the
ValueErrors of the data, store and model-file modules, and the exit code of each kind."""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1  # an error the toolkit did not foresee (traceback); output pipe closed
EXIT_USAGE = 2  # the command line: argparse's own code, and UsageError
EXIT_INPUT = 3  # data, model, config or other input files, settings' values, the environment
EXIT_TRAINING = 4  # a training whose health checks failed (TrainingFailed)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)

EXIT_CODES_HELP = """\
exit codes:
  0    done
  1    an unexpected error (printed with its traceback), or the reader of the output went
       away (wsss inspect FILE | head)
  2    usage: an unknown command or flag, a missing or malformed argument
  3    input: a dataset, model, maps or config file that cannot be used (named in the
       message), a setting's value, a missing file, a full disk, a missing optional package
  4    training health: a training stopped because its health checks failed (the message
       says which and what to try); no model file is written
  130  interrupted (Ctrl-C)
"""


class UsageError(Exception):
    """A command line that cannot be run as given (exit 2, like argparse's own errors)."""


class TrainingFailed(RuntimeError):
    """A training whose health checks failed (see :mod:`wsss.training.health`)."""


class MissingDependency(ImportError):
    """An optional compiled dependency that is not installed; the message says how to get it
    or how to do without it."""


def exit_code(err: BaseException) -> int | None:
    """The exit code of an error ``wsss`` reports as one line; None for an unexpected one.

    DatasetError, StoreError, ModelFileError and ConfigError are ValueErrors; an OSError
    (missing file, full disk, a file where a folder should be) names its path."""
    if isinstance(err, UsageError):
        return EXIT_USAGE
    if isinstance(err, TrainingFailed):
        return EXIT_TRAINING
    if isinstance(err, (OSError, ValueError, KeyError, MissingDependency)):
        return EXIT_INPUT
    return None

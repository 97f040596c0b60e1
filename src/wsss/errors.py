"""Errors that ``wsss`` reports as one line (``wsss <stage>: error: ...``) besides the
ValueErrors of the data, store and model-file modules."""

from __future__ import annotations


class TrainingFailed(RuntimeError):
    """A training whose health checks failed (see :mod:`wsss.health`)."""


class MissingDependency(ImportError):
    """An optional compiled dependency that is not installed; the message says how to get it
    or how to do without it."""

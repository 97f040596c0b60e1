"""The commands: one module per ``wsss <command>``, each declaring ``STAGE``
(:class:`wsss.core.stage.Stage`)."""

from __future__ import annotations

import importlib
import pkgutil

from wsss.core.stage import Stage


def registry() -> dict[str, Stage]:
    """Every stage of :mod:`wsss.stages`, by command name, in module-name order."""
    found: dict[str, Stage] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"wsss.stages.{info.name}")
        stage = getattr(module, "STAGE", None)
        if not isinstance(stage, Stage):
            raise TypeError(f"wsss.stages.{info.name} declares no STAGE")
        if stage.name in found:
            raise ValueError(f"two stages are named '{stage.name}'")
        found[stage.name] = stage
    return found

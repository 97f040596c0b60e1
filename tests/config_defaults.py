"""The config as the workflow sees it: config.yaml (and any preset over it) with every
setting it leaves out filled in from the schema's defaults, as the Snakefile's
``validate`` does before anything reads it."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from snakemake.utils import update_config, validate

REPO = Path(__file__).resolve().parent.parent
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def with_defaults(config: dict) -> dict:
    """A copy of ``config``, validated, with the schema's defaults filled in."""
    config = copy.deepcopy(config)
    validate(config, SCHEMA, set_default=True)
    return config


def demo_config(*presets: Path) -> dict:
    """config.yaml, the ``presets`` merged over it in order (as --configfile), with defaults."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for preset in presets:
        update_config(config, yaml.safe_load(Path(preset).read_text()))
    return with_defaults(config)

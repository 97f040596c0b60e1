"""``wsss --version`` and the exit codes: 2 usage, 3 input, 4 training health (documented in
``wsss --help``); packaging metadata: the license and the type-hint marker."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

import wsss
from wsss import cli
from wsss.core.errors import MissingDependency, TrainingFailed, UsageError
from wsss.core.stage import Stage, arg
from wsss.data.manifest import DatasetError
from wsss.data.store import StoreError
from wsss.models.registry import ModelFileError
from wsss.workflow.config_check import ConfigError

WSSS = [sys.executable, "-m", "wsss.cli"]
REPO = Path(__file__).resolve().parent.parent


def wsss_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WSSS, *args], capture_output=True, text=True, timeout=120)


def test_version_comes_from_the_package_metadata() -> None:
    proc = wsss_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wsss {importlib.metadata.version('wsss')}"


def test_help_documents_the_exit_codes() -> None:
    proc = wsss_cli("--help")
    assert proc.returncode == 0
    codes = proc.stdout.split("exit codes:")[1]
    for line in ("2    usage", "3    input", "4    training health", "130  interrupted"):
        assert line in codes, proc.stdout


@pytest.mark.parametrize(
    "argv",
    [["no-such-command"], ["predict"], ["inspect", "f.pt", "--limit", "many"], ["gpu-slot"]],
    ids=["unknown command", "missing flags", "malformed value", "gpu-slot without command"],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    proc = wsss_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr


def test_input_errors_exit_3(tmp_path: Path) -> None:
    # A model file that does not exist, one that is not a model file, a dataset without images.
    images = tmp_path / "images"
    images.mkdir()
    missing = wsss_cli("predict", "--model", str(tmp_path / "missing.pt"), "--images",
                       str(images), "--out", str(tmp_path / "out"), "--device", "cpu")  # fmt: skip
    (tmp_path / "garbage.pt").write_bytes(b"not a model")
    garbage = wsss_cli("inspect", str(tmp_path / "garbage.pt"))
    (tmp_path / "data/images").mkdir(parents=True)
    (tmp_path / "data/labels.csv").write_text("image,labels\na.jpg,cat\n")
    dataset = wsss_cli("prepare", "--kind", "folder", "--root", str(tmp_path / "data"),
                       "--out", str(tmp_path / "d.json"), "--splits", "train")  # fmt: skip
    for proc, name in ((missing, "missing.pt"), (garbage, "garbage.pt"), (dataset, "a.jpg")):
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and name in proc.stderr, proc.stderr[-2000:]


@dataclass(frozen=True, kw_only=True)
class FakeIO:
    raise_: str = arg("none", "the error to raise")


def fake_stages(error: BaseException | None) -> dict[str, Stage]:
    def run(io: FakeIO, params: None) -> None:
        if error is not None:
            raise error

    return {"fake": Stage("fake", "raises the error it is given", FakeIO, None, run)}


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (UsageError("needs a command"), 2),
        (DatasetError("a.jpg: missing"), 3),
        (ModelFileError("m.pt: not a wsss-model file"), 3),
        (ConfigError("cam.train.lr: not a number"), 3),
        (StoreError("maps.h5: incomplete"), 3),
        (FileNotFoundError(2, "No such file or directory", "x.pt"), 3),
        (OSError(28, "No space left on device", "cam.h5"), 3),
        (KeyError("missing key"), 3),
        (ValueError("--scales must be positive"), 3),
        (MissingDependency("pydensecrf2 is not installed"), 3),
        (TrainingFailed("training loss exploded"), 4),
        (KeyboardInterrupt(), 130),
    ],
)
def test_each_kind_of_error_has_its_code(
    error: BaseException | None, code: int, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(cli, "registry", lambda: fake_stages(error))
    assert cli.main(["fake"]) == code
    err = capsys.readouterr().err
    if code in (2, 3, 4):
        assert err.strip().splitlines()[-1].startswith("wsss fake: error: ")
        assert "Traceback" not in err
    # --verbose adds the traceback and keeps the code.
    assert cli.main(["-v", "fake"]) == code
    if code in (2, 3, 4):
        assert "Traceback" in capsys.readouterr().err


def test_an_unexpected_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "registry", lambda: fake_stages(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["fake"])


def test_license_and_type_hints_are_packaged() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert project["project"]["license-files"] == ["LICENSE"]
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "The wsss authors" in license_text
    assert (Path(wsss.__file__).parent / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["wsss"]

"""The commands of README.md, docs/usage.md and docs/methods/*.md run, as written, so that an
example cannot go stale.

Each command of a fenced ``sh`` block runs in a scratch directory of its own that holds what
the examples assume, made from fixtures in the real formats:

- ``results/<run>/`` (``results/demo``, ``results/msrc21``, ...; an experiment's directory
  ``results/<run>/<experiment>``): links to the tiny workflow run of ``finished_run``;
- ``/data/<name>`` (the examples' data folders) becomes ``<scratch>/data/<name>``: VOC 2012
  with SBD's ``train_aug`` list, SBD's release, MSRC-v2's release, MSRC-21 in VOC layout,
  COCO 2014; the folder a command writes (``--out``) is left for it to make;
- ``../shared/data/msrc21`` (the MSRC-21 preset's root), ``photos/`` (new images), and the
  weight files the VOC and COCO presets name.

``wsss`` commands run for real; ``snakemake`` commands as dry runs (``-n``: the config
validates, every check passes, the whole job graph resolves); ``make demo`` / ``make test``
as ``make -n`` (their recipes; CI runs ``make test`` itself); ``pip install '.[extra]'``
is checked against the package's extras (the lock installs them all in ``make venv``). A
command that none of these covers fails the test, so a new example needs a way to run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_convert import SBD_TRAIN, VOC_TRAIN, write_msrc, write_sbd, write_voc
from test_loaders import write_coco

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(\w*)")
BIN = Path(sys.executable).parent
# The one example that would take minutes here (a 400 MB fixture): the same command on
# the same fixture is a test of its own.
RUN_ELSEWHERE = {
    "wsss convert resnet38 ": "tests/test_convert.py::"
    "test_the_released_resnet38_weights_become_a_loadable_state_dict",
}


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, line) inside the fenced blocks marked ``sh``, ``bash`` or ``shell``."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = (opened[1], opened[2] in ("sh", "bash", "shell"))
        elif fence is not None and line.strip() == fence[0]:
            fence = None
        elif fence is not None and fence[1]:
            lines.append((number, line))
    return lines


def documented() -> list[tuple[str, str]]:
    """(file:line, command) of every command in the shell blocks, continued lines joined,
    comments left in place (the shell ignores them)."""
    files = [ROOT / "README.md", ROOT / "docs/usage.md", *sorted(ROOT.glob("docs/methods/*.md"))]
    found = []
    for path in files:
        code = shell_blocks(path.read_text(encoding="utf-8"))
        i = 0
        while i < len(code):
            number, line = code[i]
            text = line.strip()
            while text.endswith("\\") and i + 1 < len(code):
                i += 1
                text = text[:-1].rstrip() + " " + code[i][1].strip()
            if text and not text.startswith("#"):
                found.append((f"{path.relative_to(ROOT)}:{number}", text))
            i += 1
    return found


COMMANDS = documented()
RUNNABLE = ("wsss ", "snakemake ", "make ", "pip install ")


def test_every_documented_command_has_a_way_to_run() -> None:
    unknown = [f"{where}: {cmd}" for where, cmd in COMMANDS if not cmd.startswith(RUNNABLE)]
    assert not unknown, "documented commands no test runs:\n" + "\n".join(unknown)
    assert sum(cmd.startswith("wsss ") for _, cmd in COMMANDS) >= 8


# ---- the scratch directory ----------------------------------------------------------------


def write_msrc21(out: Path) -> None:
    from wsss.stages.convert import convert_msrc

    release = out.parent / f".{out.name}-release"
    write_msrc(release)
    convert_msrc(release, out)


def write_data(name: str, data: Path, train_aug: bool) -> None:
    """The fixture of ``/data/<name>`` under ``data`` (VOC with SBD's ``train_aug`` list,
    as ``wsss convert sbd`` writes it, when ``train_aug``)."""
    if name in ("VOC2012", "benchmark_RELEASE"):
        if (data / "VOC2012").exists():
            return
        masks = write_sbd(data)
        voc = write_voc(data, masks)
        if train_aug:
            lines = sorted(set(SBD_TRAIN) | set(VOC_TRAIN))
            (voc / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(lines) + "\n")
    elif name == "MSRC_ObjCategImageDatabase_v2":
        write_msrc(data / name)
    elif name == "msrc21":
        write_msrc21(data / name)
    elif name == "coco":
        write_coco(data / name)
    else:
        raise AssertionError(f"no fixture for /data/{name}: add one to write_data")


def scratch_for(command: str, workdir: Path, finished_run: Path) -> str:
    """Fill ``workdir`` with what ``command`` reads; return the command with its /data
    paths pointing there."""
    tiny = finished_run / "results" / "tiny"
    for run, rest in re.findall(r"results/([\w.-]+)(?:/([\w.-]+))?", command):
        if not rest or (tiny / rest).exists() or rest.startswith("shard-"):
            link = workdir / "results" / run
        else:  # an experiment of the run
            link = workdir / "results" / run / rest
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(tiny, target_is_directory=True)
    data = workdir / "data"
    written = set(re.findall(r"--out\s+/data/([\w.-]+)", command))
    for name in sorted(set(re.findall(r"/data/([\w.-]+)", command)) - written):
        write_data(name, data, train_aug="configs/voc12.yaml" in command)
    if "configs/msrc21.yaml" in command and "/data/msrc21" not in command:
        write_msrc21(workdir.parent / "shared/data/msrc21")  # the preset's ../shared/data
    if "--images photos" in command:
        (workdir / "photos").mkdir()
        rng = np.random.default_rng(0)
        for i, size in enumerate([(48, 64), (64, 40)]):
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(workdir / f"photos/photo{i}.jpg")
    for weights in re.findall(r"weights:\s*(weights/\S+)", preset_text(command)):
        (workdir / weights).parent.mkdir(parents=True, exist_ok=True)
        (workdir / weights).write_bytes(b"")  # the check needs the file; a dry run loads none
    return re.sub(r"(?<![\w.])/data/", f"{data}/", command)


def preset_text(command: str) -> str:
    return "".join((ROOT / c).read_text() for c in re.findall(r"configs/[\w.-]+\.yaml", command))


# ---- the commands -------------------------------------------------------------------------


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def snakemake_dry_run(command: str) -> str:
    """The command as a dry run of this checkout's workflow (``-s``) in the scratch
    directory (``-d``), profiles and presets read from the checkout."""
    argv = shlex.split(command, comments=True)
    for i, arg in enumerate(argv):
        if arg.startswith(("configs/", "profiles/")):
            argv[i] = str(ROOT / arg)
    argv[1:1] = ["-n", "-s", str(ROOT / "Snakefile")]
    return shlex.join(argv)


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_runs(
    where: str, command: str, finished_run: Path, tmp_path: Path
) -> None:
    elsewhere = [test for prefix, test in RUN_ELSEWHERE.items() if command.startswith(prefix)]
    if elsewhere:
        path, name = elsewhere[0].split("::")
        assert f"def {name}(" in (ROOT / path).read_text()
        return
    if command.startswith("pip install "):
        extras = re.findall(r"\[([\w,-]+)\]", command)
        pyproject = (ROOT / "pyproject.toml").read_text()
        for extra in ",".join(extras).split(",") if extras else []:
            assert re.search(rf"^{re.escape(extra)}\s*=", pyproject, re.M), f"{where}: {extra}"
        return
    workdir = tmp_path / "work"
    workdir.mkdir()
    if command.startswith("make "):
        proc = shell(shlex.join(["make", "-n", *shlex.split(command, comments=True)[1:]]), ROOT)
    elif command.startswith("snakemake "):
        proc = shell(snakemake_dry_run(scratch_for(command, workdir, finished_run)), workdir)
        assert "Job stats" in proc.stdout or proc.returncode != 0, proc.stdout[-2000:]
    else:
        proc = shell(scratch_for(command, workdir, finished_run), workdir)
    assert proc.returncode == 0, f"{where}: {command}\n{proc.stdout[-1500:]}{proc.stderr[-3000:]}"

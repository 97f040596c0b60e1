"""The command line built from the stage registry: help without torch, a help text for
every flag, stages that do not import each other, unique command names."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import wsss.stages
from wsss.cli import build_parser
from wsss.core.stage import Stage
from wsss.stages import registry

STAGES_DIR = Path(wsss.stages.__file__).parent
# The commands the workflow and the docs use.
COMMANDS = {
    "prepare",
    "train-cam",
    "infer-cam",
    "eval-maps",
    "affinity-labels",
    "train-aff",
    "random-walk",
    "pseudo-masks",
    "eval-labels",
    "train-seg",
    "infer-seg",
    "train-wsfcn",
    "predict",
    "figure",
    "inspect",
    "summary",
    "report-figures",
    "gpu-slot",
    "make-demo",
}

HELP_WITHOUT_TORCH = """
import contextlib, io, json, sys
from wsss.cli import build_parser, main
from wsss.stages import registry

results = {}
for argv in [["--help"]] + [[name, "--help"] for name in registry()]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
            code = None
        except SystemExit as exit:
            code = exit.code
    results[" ".join(argv)] = [code, out.getvalue()]
build_parser()
print(json.dumps({"torch": "torch" in sys.modules, "results": results}))
"""


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_help_does_not_import_torch() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, check=True
    )
    report = json.loads(proc.stdout)
    assert report["torch"] is False
    results = report["results"]
    assert len(results) == len(registry()) + 1
    code, text = results["--help"]
    assert code == 0 and text.startswith("usage: wsss")
    assert all(name in text for name in registry())
    for name in registry():
        code, text = results[f"{name} --help"]
        assert code == 0 and text.startswith(f"usage: wsss {name}"), (name, text)


def test_help_of_the_installed_entry_point() -> None:
    for argv in (["--help"], ["train-cam", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "wsss.cli", *argv], capture_output=True, text=True
        )
        assert proc.returncode == 0 and proc.stdout.startswith("usage: wsss"), proc.stderr
    assert "--state-dir" in proc.stdout and "--epochs" in proc.stdout


def test_every_flag_has_a_help_text() -> None:
    parser = build_parser()
    commands = subcommands(parser)
    assert set(commands) == set(registry())
    for name, sub in commands.items():
        for action in sub._actions:
            label = action.option_strings or [action.dest]
            assert action.help and action.help.strip(), f"wsss {name} {label[0]}: no help"
    for action in parser._actions:  # wsss's own flags, and each command's one-line help
        if action.option_strings:
            assert action.help and action.help.strip(), action.option_strings
        elif isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help and choice.help.strip(), choice.dest


def test_flags_are_the_dataclass_fields() -> None:
    for name, sub in subcommands(build_parser()).items():
        stage = registry()[name]
        dests = {a.dest for a in sub._actions} - {"help"}
        fields = [
            f.name for cls in (stage.io, stage.params) if cls for f in dataclasses.fields(cls)
        ]
        assert dests == set(fields), name
        for cls in (stage.io, stage.params):
            if cls is not None:
                assert cls.__dataclass_params__.frozen, f"{name}: {cls.__name__} is not frozen"


def imported_modules(tree: ast.AST, package: str) -> list[str]:
    """Every module an import statement of ``tree`` names (anywhere, also inside
    functions), with relative imports resolved against ``package``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
    return found


def test_no_stage_imports_another_stage() -> None:
    sources = sorted(STAGES_DIR.glob("*.py"))
    assert len(sources) > len(COMMANDS)  # the stages and __init__
    for source in sources:
        tree = ast.parse(source.read_text(), filename=str(source))
        for module in imported_modules(tree, "wsss.stages"):
            assert not (module == "wsss.stages" or module.startswith("wsss.stages.")), (
                f"{source.name} imports {module}"
            )


def test_imported_modules_sees_stage_imports() -> None:
    """The check above would notice each way of importing a stage."""
    for line in (
        "from wsss.stages import train_cam",
        "import wsss.stages.train_cam",
        "from wsss.stages.train_cam import Params",
        "from . import train_cam",
        "from .train_cam import Params",
        "def f():\n    from wsss import stages",
    ):
        modules = imported_modules(ast.parse(line), "wsss.stages")
        assert any(m == "wsss.stages" or m.startswith("wsss.stages.") for m in modules), line


def test_registry_names_are_unique_and_cover_the_commands() -> None:
    names = []
    for info in pkgutil.iter_modules(wsss.stages.__path__):
        stage = importlib.import_module(f"wsss.stages.{info.name}").STAGE
        assert isinstance(stage, Stage)
        names.append(stage.name)
    assert len(names) == len(set(names)), sorted(names)
    assert sorted(registry()) == sorted(names)
    assert COMMANDS <= set(names)


def test_openmp_waits_briefly_unless_the_environment_says_otherwise() -> None:
    """The CLI sets GNU OpenMP's spin count before anything loads torch (two jobs on the
    same cores: docs/benchmarks.md, "Speed"); a wait the user chose is kept."""
    from wsss.cli import SPIN_COUNT, share_cores

    env: dict[str, str] = {}
    share_cores(env)
    assert env == {"GOMP_SPINCOUNT": SPIN_COUNT}
    for chosen in ({"GOMP_SPINCOUNT": "300000"}, {"OMP_WAIT_POLICY": "ACTIVE"}):
        env = dict(chosen)
        share_cores(env)
        assert env == chosen
    code = (
        "import os, sys\n"
        "from wsss.cli import main\n"
        "try:\n    main(['inspect', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=clean
    )
    assert proc.stdout.split()[-2:] == [SPIN_COUNT, "False"]


FAULTS_OF_A_REUSED_BLOCK = """
import ctypes, resource, sys
from wsss.cli import keep_freed_memory
print(keep_freed_memory({} if sys.argv[1] == 'keep' else {'GLIBC_TUNABLES': ''}))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2**20  # above glibc's largest mmap threshold (32 MB)
for _ in range(3):  # the first round maps the memory, later ones may reuse it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # written, as a tensor's values are
    libc.free(block)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_freed_memory_is_reused_without_page_faults_unless_malloc_is_tuned() -> None:
    """A block freed and allocated again costs no page faults once the CLI has kept freed
    memory (a training step's activations, docs/benchmarks.md "Speed"); with glibc's
    defaults a 64 MB block is mapped afresh every round (16,384 page faults of 4 kB, at
    least 32 where the kernel gives 2 MB pages), and an environment that tunes malloc
    itself is left alone."""

    def faults(mode: str) -> tuple[str, list[int]]:
        out = subprocess.run(
            [sys.executable, "-c", FAULTS_OF_A_REUSED_BLOCK, mode],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return out[0], [int(n) for n in out[1:]]

    kept, rounds = faults("keep")
    assert kept == "True" and max(rounds[1:]) < 32
    untouched, rounds = faults("tuned")
    assert untouched == "False" and min(rounds[1:]) >= 32

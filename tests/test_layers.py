"""The package's layers (docs/architecture.md, section Layers): every module of src/wsss
belongs to one, and imports only its own layer and the layers below, including the imports
inside functions; models import no method."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"


def layers() -> list[tuple[str, list[str]]]:
    """(layer, its packages and modules), top first, from the table in docs/architecture.md."""
    text = (REPO / "docs/architecture.md").read_text()
    section = text[text.index("## Layers") :]
    table = re.search(r"```\n(.*?)```", section, re.S).group(1).splitlines()
    assert table[0].split()[:2] == ["layer", "packages"]
    rows = []
    for line in table[1:]:
        name, rest = line.split(maxsplit=1)
        members = []
        for word in rest.split():
            if not re.fullmatch(r"wsss(\.\w+)*", word):
                break
            members.append(word)
        rows.append((name, members))
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "wsss").rglob("*.py"))}


def rank_of(module: str, table: list[tuple[str, list[str]]]) -> tuple[int, str]:
    """(rank from the bottom, layer name) of the longest listed prefix of ``module``."""
    best: tuple[int, int, str] | None = None
    for index, (name, members) in enumerate(table):
        for member in members:
            if module == member or module.startswith(member + "."):
                if best is None or len(member) > best[0]:
                    best = (len(member), len(table) - 1 - index, name)
    if best is None:
        raise LookupError(module)
    return best[1], best[2]


def imports(path: Path) -> set[str]:
    """Every wsss module ``path`` imports, anywhere in it (``from wsss import x`` counts as
    wsss.x when x is a module, else as wsss)."""
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "wsss"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "wsss":
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def test_every_module_belongs_to_a_layer_and_every_layer_exists() -> None:
    table = layers()
    assert [name for name, _ in table][-1] == "core"
    for module in modules():
        rank_of(module, table)  # raises for a module of no layer
    for _, members in table:
        for member in members:
            assert member in modules(), f"docs/architecture.md lists {member}, which does not exist"
    packages = {p.name for p in (SRC / "wsss").iterdir() if (p / "__init__.py").is_file()}
    listed = {m.split(".")[1] for _, members in table for m in members if m.count(".") == 1}
    assert packages <= listed, f"subpackages missing from the layer table: {packages - listed}"


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_go_downward_only(module: str) -> None:
    table = layers()
    rank, layer = rank_of(module, table)
    upward = []
    for target in sorted(imports(modules()[module])):
        target_rank, target_layer = rank_of(target, table)
        if target_rank > rank:
            upward.append(f"{target} ({target_layer})")
    assert upward == [], f"{module} ({layer}) imports a layer above it: {', '.join(upward)}"


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The import scan sees an import inside a function, where a lazy upward import hides."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from wsss.methods import randomwalk\n    import wsss.stages\n")
    assert imports(source) == {"wsss.methods.randomwalk", "wsss.stages"}
    assert rank_of("wsss.models.cam", layers()) < rank_of("wsss.methods.randomwalk", layers())

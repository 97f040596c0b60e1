"""The documentation's command examples and links are real: every `wsss ...` line of a
fenced code block in README.md, docs/*.md and docs/methods/*.md parses with the CLI's own
parser (no stage runs), and every relative link or image points to an existing file (and,
for a Markdown file, to an existing heading when it names one)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from wsss.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = ("wsss ", ".venv/bin/wsss ")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
# [text](target) and ![alt](target), the target up to a space or the closing bracket.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    docs = ROOT / "docs"
    return [ROOT / "README.md", *sorted(docs.glob("*.md")), *sorted(docs.glob("methods/*.md"))]


def split_fenced(text: str) -> tuple[list[tuple[int, str]], str]:
    """(line number, line) inside fenced code blocks, and the text with those lines blanked
    (same line numbers) for the link search."""
    code, prose = [], []
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        bare = line.strip()
        if fence is None and opened:
            fence = opened.group(1)
            prose.append("")
        elif fence is not None and bare.startswith(fence) and not bare.strip(fence[0]):
            fence = None
            prose.append("")
        elif fence is not None:
            code.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return code, "\n".join(prose)


def commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every wsss command in fenced code blocks, lines continued
    with a backslash joined; commands with `...` placeholders are left out."""
    code, _ = split_fenced(path.read_text(encoding="utf-8"))
    found = []
    i = 0
    while i < len(code):
        number, line = code[i]
        text = line.strip()
        if text.startswith(PREFIXES):
            while text.endswith("\\") and i + 1 < len(code) and code[i + 1][0] == code[i][0] + 1:
                i += 1
                text = text[:-1].rstrip() + " " + code[i][1].strip()
            if "..." not in text:
                found.append((number, text))
        i += 1
    return found


def parse_error(parser, command: str) -> str | None:
    """None when ``command`` parses, else argparse's message."""
    try:
        argv = shlex.split(command, comments=True)[1:]
    except ValueError as err:
        return f"cannot split the line: {err}"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):  # --help and --version exit 0
            return stderr.getvalue().strip().splitlines()[-1]
    return None


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = split_fenced(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for line in prose.splitlines():
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    _, prose = split_fenced(path.read_text(encoding="utf-8"))
    # Inline code spans (also across a line break) blanked, newlines kept.
    prose = re.sub(r"`[^`]*`", lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)
    found = []
    for pattern in (LINK, HTML_SRC):
        for match in pattern.finditer(prose):
            found.append((prose.count("\n", 0, match.start()) + 1, match.group(1)))
    return sorted(found)


def broken_link(path: Path, target: str, headings: bool) -> str | None:
    """None when ``target`` (relative to ``path``) exists (and with ``headings``, the
    heading it names in a Markdown file), else what is wrong."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:
        return None
    file_part, _, fragment = target.partition("#")
    linked = (path.parent / file_part).resolve() if file_part else path
    if not linked.exists():
        return None if headings else "no such file"  # the other test's
    if headings and fragment and linked.suffix == ".md" and fragment not in anchors(linked):
        return f"no heading '#{fragment}' in {linked.relative_to(ROOT)}"
    return None


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_documented_commands_parse(parser):
    checked, failures = 0, []
    for path in markdown_files():
        for number, command in commands(path):
            checked += 1
            error = parse_error(parser, command)
            if error:
                failures.append(f"{path.relative_to(ROOT)}:{number}: {command}\n    {error}")
    assert checked, "no wsss command found in the documentation's code blocks"
    assert not failures, "commands that do not parse:\n" + "\n".join(failures)


def link_failures(headings: bool) -> tuple[int, list[str]]:
    checked, failures = 0, []
    for path in markdown_files():
        for number, target in links(path):
            checked += 1
            problem = broken_link(path, target, headings)
            if problem:
                failures.append(f"{path.relative_to(ROOT)}:{number}: {target}: {problem}")
    return checked, failures


def test_relative_links_and_images_exist():
    checked, failures = link_failures(headings=False)
    assert checked, "no link found in the documentation"
    assert not failures, "links to files that do not exist:\n" + "\n".join(failures)


def test_linked_headings_exist():
    _, failures = link_failures(headings=True)
    assert not failures, "links to headings that do not exist:\n" + "\n".join(failures)


@pytest.mark.parametrize(
    ("command", "ok"),
    [
        ("wsss summary results/demo", True),
        ("wsss figure --manifest m.json --out p.png --labels 'a=b' # a comment", True),
        ("wsss train-cam --help", True),
        ("wsss figure --manifest m.json", False),  # --out is required
        ("wsss summary results/demo --no-such-flag", False),
        ("wsss no-such-command", False),
    ],
)
def test_the_check_itself(parser, command, ok):
    assert (parse_error(parser, command) is None) is ok

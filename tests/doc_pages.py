"""The pages the docs' spec reads, and their shell commands: README.md, docs/*.md and
benchmarks/RESULTS.md in a checkout. Shared by `test_docs.py`, which parses each command, and
`test_doc_commands.py`, which runs them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PAGES = [README, *DOCS, RESULTS]
IN_A_CHECKOUT = README.is_file() and MAKEFILE.is_file() and bool(DOCS)

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL_FENCES = {"", "sh", "bash", "shell", "console"}
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


def skip_outside_a_checkout() -> None:
    """Installed as `cifar_spec.spec`, a docs test has no pages to read: it skips, saying so."""
    if not IN_A_CHECKOUT:
        pytest.skip(
            "the docs live in a checkout, not in the installed package", allow_module_level=True
        )


def name(page: Path) -> str:
    """The page as the checkout names it (a page elsewhere, a test's own, by its file name)."""
    return page.relative_to(ROOT).as_posix() if page.is_relative_to(ROOT) else page.name


def shell_commands(page: Path) -> list[tuple[int, str]]:
    """(line number, command) of each command in the page's shell fences, continuations
    (a trailing backslash) joined into one line and a console's `$ ` prompt dropped."""
    text = page.read_text(encoding="utf-8")
    commands = []
    for fence in FENCE.finditer(text):
        if fence.group(1) not in SHELL_FENCES:
            continue
        first = text.count("\n", 0, fence.start(2)) + 1
        pending, start = "", 0
        for offset, line in enumerate(fence.group(2).splitlines()):
            if not pending:
                start = first + offset
                line = line.removeprefix("$ ")
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            commands.append((start, pending + line))
            pending = ""
        if pending:
            commands.append((start, pending))
    return commands


def simple_commands(command: str) -> list[list[str]]:
    """The words of each simple command in a shell line (split at `&&`, `|`, `;` ...), with
    `# comments` dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in OPERATORS:
            parts.append([])
        else:
            parts[-1].append(token)
    return [words for words in parts if words]


def cifar_spec_argv(words: list[str]) -> list[str] | None:
    """The arguments given to cifar-spec, however it is started: `cifar-spec`,
    `.venv/bin/cifar-spec`, `python -m cifar_spec`, `torchrun ... -m cifar_spec`."""
    for i, word in enumerate(words):
        if word.rsplit("/", 1)[-1] == "cifar-spec":
            return words[i + 1 :]
        if word == "-m" and words[i + 1 : i + 2] == ["cifar_spec"]:
            return words[i + 2 :]
    return None

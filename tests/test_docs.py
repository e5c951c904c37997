"""The docs' spec: README.md and docs/*.md say only what the code does.

Every fenced shell command that calls cifar-spec is parsed by the real parser (parsing runs
nothing), every subcommand the docs name answers `--help`, every `make TARGET` is a target of
the Makefile, and every relative link leads to a file (and heading) that exists. The docs live
in a checkout: installed as `cifar_spec.spec`, this file has none to check and skips.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from doc_pages import (
    DOCS,
    FENCE,
    MAKEFILE,
    PAGES,
    README,
    RESULTS,
    ROOT,
    cifar_spec_argv,
    name,
    shell_commands,
    simple_commands,
    skip_outside_a_checkout,
)

skip_outside_a_checkout()
README_LINES = 120

INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
MAKE_OPTIONS_WITH_VALUE = {"-C", "-f", "-I", "-j", "-o", "-W", "--directory", "--file"}
SUBCOMMAND_WORD = re.compile(r"[a-z][a-z0-9-]*")


def make_targets_in(words: list[str]) -> list[str]:
    while words and "=" in words[0]:  # VAR=value make ...
        words = words[1:]
    if not words or words[0].rsplit("/", 1)[-1] != "make":
        return []
    targets, skip = [], False
    for word in words[1:]:
        if skip:
            skip = False
        elif word in MAKE_OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith("-") and "=" not in word:
            targets.append(word)
    return targets


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def commands_calling_cifar_spec() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for line, command in shell_commands(page):
            for words in simple_commands(command):
                argv = cifar_spec_argv(words)
                if argv is not None:
                    found.append((f"{name(page)}:{line}", argv))
    return found


def subcommands_named() -> list[tuple[str, ...]]:
    """The command words (`bench`, `data synth`) of every cifar-spec command in the docs, in
    their fences and in their inline code."""
    named = set()
    argvs = [argv for _, argv in commands_calling_cifar_spec()]
    for page in PAGES:
        for span in INLINE_CODE.findall(prose(page)):
            for words in simple_commands(span):
                argv = cifar_spec_argv(words)
                if argv is not None:
                    argvs.append(argv)
    groups = command_groups()
    for argv in argvs:
        words = []
        for word in argv[:2]:
            if not SUBCOMMAND_WORD.fullmatch(word) or (words and words[0] not in groups):
                break  # a command's argument (`compare python3 ...`), not a command word
            words.append(word)
        if words:
            named.add(tuple(words))
    return sorted(named)


def command_groups() -> set[str]:
    """The commands that hold commands of their own (`data`), as the real parser has them."""
    # At collection: the parametrisation needs them, and the parser imports torch.
    from cifar_spec.cli import build_parser

    def commands(parser) -> dict:
        actions = parser._subparsers._group_actions if parser._subparsers else []
        return {k: v for a in actions for k, v in a.choices.items()}

    return {name for name, sub in commands(build_parser()).items() if commands(sub)}


def make_targets_named() -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        spans = [command for _, command in shell_commands(page)]
        spans += INLINE_CODE.findall(prose(page))
        for span in spans:
            for words in simple_commands(span):
                found.update((name(page), target) for target in make_targets_in(words))
    return sorted(found)


def makefile_targets() -> set[str]:
    targets = set()
    for line in MAKEFILE.read_text(encoding="utf-8").splitlines():
        rule = re.match(r"^([^\s#:=][^:=]*?)\s*:(?![:=])(.*)$", line)
        if rule is None:
            continue
        names = rule.group(1).split()
        if names == [".PHONY"]:
            names = rule.group(2).split()
        targets.update(names)
    return targets


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def relative_links() -> list[tuple[Path, str]]:
    links = []
    for page in PAGES:
        text = INLINE_CODE.sub("", prose(page))
        for target in LINK.findall(text):
            if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
                continue  # https:, mailto:: not ours to check offline
            links.append((page, target))
    return links


COMMANDS = commands_calling_cifar_spec()
SUBCOMMANDS = subcommands_named()
MAKE_TARGETS = make_targets_named()
LINKS = relative_links()


@pytest.fixture(scope="module")
def parser():
    from cifar_spec.cli import build_parser

    return build_parser()


def test_the_readme_has_at_most_120_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_LINES, (
        f"README.md has {len(lines)} lines; the most is {README_LINES}: move depth to docs/"
    )


def test_the_readme_shows_make_run_and_make_test_each_with_its_comment_in_its_first_10_lines():
    head = README.read_text(encoding="utf-8").splitlines()[:10]
    for target in ("run", "test"):
        assert any(re.match(rf"make {target}\s+# \S", line) for line in head), (
            f"`make {target}  # what it does` is not in README.md's first 10 lines"
        )


def test_the_docs_show_every_cifar_spec_command_in_a_shell_fence(parser):
    shown = {tuple(argv[:2]) for _, argv in COMMANDS} | {tuple(argv[:1]) for _, argv in COMMANDS}
    missing = []
    for action in parser._actions:
        for command, sub in (getattr(action, "choices", None) or {}).items():
            nested = [a for a in sub._actions if isinstance(getattr(a, "choices", None), dict)]
            paths = [(command, inner) for a in nested for inner in a.choices] or [(command,)]
            missing += [" ".join(path) for path in paths if path not in shown]
    assert not missing, f"no example in README.md or docs/ of: cifar-spec {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.split("#")[0]).resolve() for page, target in LINKS if page == README}
    assert not [name(page) for page in DOCS if page.resolve() not in linked]


@pytest.mark.parametrize(
    "argv",
    [argv for _, argv in COMMANDS],
    ids=[f"{at} {shlex.join(argv)}" for at, argv in COMMANDS],
)
def test_every_cifar_spec_command_in_the_docs_parses_with_the_real_parser(argv, parser, capsys):
    if any("..." in word for word in argv):
        pytest.skip(f"a placeholder in `cifar-spec {shlex.join(argv)}`")
    try:
        parser.parse_args(argv)
    except SystemExit as exit:
        if exit.code == 0 and {"-h", "--help"} & set(argv):
            return
        error = capsys.readouterr().err.strip().splitlines()[-1:]
        pytest.fail(f"`cifar-spec {shlex.join(argv)}` does not parse: {' '.join(error)}")


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=[" ".join(words) for words in SUBCOMMANDS])
def test_each_cifar_spec_command_named_in_the_docs_answers_help(words, capsys):
    from cifar_spec.cli import main

    with pytest.raises(SystemExit) as exit:
        main([*words, "--help"])
    out = capsys.readouterr()
    assert exit.value.code == 0, f"cifar-spec {' '.join(words)} --help: {out.err.strip()}"
    assert out.out.startswith(f"usage: cifar-spec {' '.join(words)}")


@pytest.mark.parametrize(
    "target",
    [target for _, target in MAKE_TARGETS],
    ids=[f"{p}: make {t}" for p, t in MAKE_TARGETS],
)
def test_every_make_target_in_the_docs_is_a_target_of_the_makefile(target):
    assert target in makefile_targets(), f"`make {target}`: the Makefile has no such target"


@pytest.mark.parametrize(
    "page, target", LINKS, ids=[f"{name(page)} -> {target}" for page, target in LINKS]
)
def test_every_relative_link_in_the_docs_points_at_a_file_that_exists(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{name(page)} links to {target}: no such file"
    if anchor and file.suffix == ".md":
        text = FENCE.sub("", file.read_text("utf-8"))
        anchors = {slug(h) for h in HEADING.findall(text)} | set(ANCHOR.findall(text))
        assert anchor in anchors, f"{name(page)} links to {target}: no such heading or anchor"


def test_the_results_page_opens_with_where_the_product_stands_each_row_linked_to_its_measurement():
    text = RESULTS.read_text("utf-8")
    sections = [m.start() for m in re.finditer(r"^## ", text, re.M)]
    assert text[sections[0] :].startswith("## Where the product stands"), "not the first section"
    summary = text[sections[0] : sections[1]]
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 10, "the table of current figures is missing or short"
    for row in rows[1:]:  # the header row names the columns
        assert re.search(r"\(#[\w-]+\)", row), f"a figure without its measurement: {row[:80]}"


def test_the_docs_name_cifar_spec_commands_and_make_targets_and_links():
    """The extractors above find what the pages hold: an empty list would pass every test."""
    assert len(COMMANDS) >= 10 and len(SUBCOMMANDS) >= 7
    assert {"run", "test"} <= {target for _, target in MAKE_TARGETS}
    assert len(LINKS) >= len(DOCS)

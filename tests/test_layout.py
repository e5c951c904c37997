"""The package's shape: no import circle, and no import of our own modules hidden in a function
without a comment that names the cost or the cycle it avoids."""

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cifar_spec

PACKAGE = Path(cifar_spec.__file__).parent
MODULES = {
    ".".join(("cifar_spec", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
        ".__init__"
    ): path
    for path in sorted(PACKAGE.rglob("*.py"))
}


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def our_imports(node: ast.stmt) -> list[str]:
    """The modules of ours that an import statement loads (a name imported from a package may
    be a module of it: `from cifar_spec.cli import bench`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "cifar_spec"]
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cifar_spec":
        return [
            f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
            for a in node.names
        ]
    return []


def top_level_imports(tree: ast.Module) -> set[str]:
    """What importing the module runs: its top-level imports, outside `if TYPE_CHECKING:`."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and is_type_checking(node):
            continue
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            found.update(our_imports(inner))
    return found


def graph() -> dict[str, set[str]]:
    return {
        name: top_level_imports(ast.parse(path.read_text())) & MODULES.keys()
        for name, path in MODULES.items()
    }


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(edges[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_scan_sees_the_package_and_its_imports():
    edges = graph()
    assert {"cifar_spec.cli", "cifar_spec.bench.gate", "cifar_spec.errors"} <= edges.keys()
    assert "cifar_spec.cli.options" in edges["cifar_spec.cli.bench"]
    assert "cifar_spec.bench.stats" in edges["cifar_spec.bench.gate"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_itself_through_others(module):
    assert cycle_from(module, graph()) is None, " -> ".join(cycle_from(module, graph()))


# What starts a process: the modules that do are the harness's drivers, never its formatters.
STARTS_A_PROCESS = re.compile(
    r"\bsubprocess\.|\bPopen\(|\bos\.(fork|exec|spawn|posix_spawn)|multiprocessing"
)
FORMATTERS = ("cifar_spec.bench.report", "cifar_spec.bench.chart", "cifar_spec.bench.records")


def reached(start: str, edges: dict[str, set[str]]) -> set[str]:
    """Every module that importing `start` imports, itself included."""
    seen, stack = {start}, [start]
    while stack:
        for nxt in edges[stack.pop()] - seen:
            seen.add(nxt)
            stack.append(nxt)
    return seen


@pytest.mark.parametrize("formatter", FORMATTERS)
def test_a_formatter_of_the_harness_imports_nothing_that_starts_a_process(formatter):
    starters = sorted(
        m for m in reached(formatter, graph()) if STARTS_A_PROCESS.search(MODULES[m].read_text())
    )
    assert not starters, f"{formatter} imports {starters}, which start processes"


def test_the_scan_for_process_starters_finds_the_drivers():
    edges = graph()
    for driver in ("cifar_spec.bench._handle", "cifar_spec.bench.callgrind"):
        assert STARTS_A_PROCESS.search(MODULES[driver].read_text()), driver
    assert "cifar_spec.bench._handle" in reached("cifar_spec.bench.compare", edges)


def lazy_imports(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each import of our modules inside a function."""
    tree = ast.parse(path.read_text())
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if our_imports(node):
                    out.append((node.lineno, ast.unparse(node)))
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_an_import_of_ours_inside_a_function_says_why_in_a_comment(module):
    lines = MODULES[module].read_text().splitlines()
    for lineno, text in lazy_imports(MODULES[module]):
        above = lineno - 2  # the comment may head a block of such imports
        while above > 0 and lines[above].strip().startswith(("from ", "import ")):
            above -= 1
        said = lines[above].strip().startswith("#") or "#" in lines[lineno - 1]
        assert said, f"{module}:{lineno}: {text} has no comment naming the cost or cycle"


def test_the_package_imports_torch_only_for_a_module_that_uses_it(tmp_path):
    # A fresh Python: the file writer and the errors, as a probe or a writer of stdout uses
    # them, without the 2.7 s of CPU that importing torch costs (Zen 1).
    code = "import sys, cifar_spec.files, cifar_spec.errors; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert done.stdout.strip() == "False"


def test_every_public_name_of_the_package_is_found_where_it_is_defined():
    for name, module in cifar_spec.EXPORTS.items():
        assert getattr(cifar_spec, name) is getattr(importlib.import_module(module), name)
    assert sorted(cifar_spec.__all__) == sorted(cifar_spec.EXPORTS) and "fit" in dir(cifar_spec)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cifar_spec.nothing  # noqa: B018

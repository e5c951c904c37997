"""How a process of ours is started: it runs our code, whatever folder or variables it starts in.

`python -m module` puts the current folder first on `sys.path`, and every
Python reads `PYTHONPATH`: a `torch.py` left where a user runs `cifar-spec bench`,
or a stray `PYTHONPATH` in their shell, would run inside every worker while the
table looked normal. So a worker, probe or rank is started as `python -c`, with code
that first drops the current folder from `sys.path` before anything is imported (site's
own imports run earlier, before Python adds that folder), and the environment it
gets has no variable that tells Python where to find code.

A deliberate environment still works: a venv's Python finds its own
site-packages, and a wrapper script that sets `PYTHONPATH` itself (a candidate
made slower on purpose, say) sets it after we cleared it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Variables that change which code Python imports or runs at start-up
# (PYTHONPATH, PYTHONSTARTUP, PYTHONUSERBASE, PYTHONWARNINGS, which imports the
# modules its categories name, ...). Every PYTHON* variable goes, except these,
# which change how the interpreter behaves, or only narrow where it looks:
# PYTHONHOME is where this very Python's standard library is (a relocated one
# needs it), PYTHONNOUSERSITE keeps ~/.local's packages out, as the user asked.
KEPT = frozenset(
    {
        "PYTHONHOME",
        "PYTHONNOUSERSITE",
        "PYTHONHASHSEED",
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONFAULTHANDLER",
    }
)

# What every start runs first: the current folder off the path, before any import.
OFF_PATH = """\
import sys
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
"""


def python_command(python: str, module: str, *args: str, first: str | None = None) -> list[str]:
    """The command that runs `module` as a script in `python`, never from the current folder;
    `first`: a folder to put first on its path (a checkout whose code must run)."""
    head = f"sys.path.insert(0, {first!r})\n" if first else ""
    run = f"import runpy\nrunpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    return [python, "-c", OFF_PATH + head + run, *args]


def probe_command(python: str, code: str) -> list[str]:
    """`python -c code`, with the current folder off the path before `code` imports anything."""
    return [python, "-c", OFF_PATH + code]


def clean_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) without the variables that tell Python where to find code."""
    env = os.environ if env is None else env
    return {
        name: value for name, value in env.items() if not name.startswith("PYTHON") or name in KEPT
    }

"""How a process of ours starts: in the user's environment, never with code from the current folder.

A worker, probe or rank runs in the environment the command was started in: its
`PYTHONPATH`, a `sitecustomize.py` there, a patched package. That environment is the
user's own, the one their command and every Python they start run in; a verdict about
any other is about other code than theirs (a gate whose workers dropped `PYTHONPATH`
judged the plain environment, and passed a step that ran 2.7% more instructions).
`_handle.Expected` then checks that each worker imported the torch and cifar_spec
expected of it.

The one thing kept out is the current folder. `python -m module` puts it first on
`sys.path`, so a `torch.py` or `json.py` left where a user runs `cifar-spec bench`
would run inside every worker while the table looked normal. So a process is started
as `python -c`, with code that first drops the current folder from `sys.path` before
anything is imported (site's own imports run earlier, before Python adds that folder),
and its `PYTHONPATH` has no entry that names the current folder: an empty one, `.`, or
its path (`site` reads these before any code of ours runs, a `sitecustomize.py` among
them). A command that imported its own torch or cifar_spec from there is refused by
that check, not measured with another.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

# PYTHONINSPECT leaves a process at an interactive prompt when its code ends: a probe then
# waits on the terminal for its timeout, a worker asked to exit on its pipe until it is
# killed. Every other variable is the user's environment and is passed on as it is,
# PYTHONSTARTUP included, which `python -c` never reads (only an interactive session does).
DROPPED = frozenset({"PYTHONINSPECT"})


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


def resolve_python(python: str) -> str:
    """The path a Python is started by, fixed once before any work: a name (`python3`) as
    PATH finds it, a relative path against this folder. Every process of ours then starts the
    same file, whatever folder it runs in (a counting worker runs in one of its own, under
    valgrind, which looks a relative path up from there). Links are kept: a venv's python is
    a link, and the venv is what it names."""
    if os.sep not in python:
        return shutil.which(python) or python  # not found: refused by the check that runs it
    return os.path.abspath(python)


def probe_command(python: str, code: str) -> list[str]:
    """`python -c code`, with the current folder off the path before `code` imports anything."""
    return [python, "-c", OFF_PATH + code]


def path_without(value: str, here: str) -> str:
    """The PYTHONPATH `value` without the entries that name the folder `here` (an empty one,
    `.`, its path, a link to it), each other made absolute against `here`: a process of ours
    may run in another folder (a counting worker does), where a relative one would name
    something else."""
    folder = os.path.realpath(here)
    kept = []
    for entry in value.split(os.pathsep):
        path = os.path.abspath(os.path.join(here, entry))  # an absolute entry is kept as it is
        if os.path.realpath(path) != folder:
            kept.append(entry if os.path.isabs(entry) else path)
    return os.pathsep.join(kept)


def clean_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) as a process of ours gets it: the user's, less the variables in
    DROPPED and the entries of PYTHONPATH that name the current folder."""
    env = os.environ if env is None else env
    out = {name: value for name, value in env.items() if name not in DROPPED}
    path = path_without(out.pop("PYTHONPATH", ""), os.getcwd())
    if path:
        out["PYTHONPATH"] = path
    return out

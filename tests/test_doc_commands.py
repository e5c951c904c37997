"""The docs' commands, run: every cifar-spec command that README.md and docs/ show, at its
smallest honest size, ends as the docs say (`pytest -m docs`; CI runs this tier).

`test_docs.py` parses each command; this tier runs it, as a reader would: the page's commands
in the page's order (a `--resume` follows the run it resumes), in a folder of the page's own
where `.venv` and `old/.venv` are this environment (so `compare old/.venv/bin/python
.venv/bin/python` compares it with itself) and `data/` holds a small set in CIFAR-10's format
(so `--download`, which this machine cannot do, finds its files). Each command keeps its
flags; only its size shrinks: fewer images, epochs, cases, workers, seconds and processes
(`smallest`). A command that needs what this machine lacks (a GPU, a second machine) is
skipped with the reason. RESULTS.md's commands are a record of past runs, with that machine's
paths, and are not rerun.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from doc_pages import (
    DOCS,
    README,
    cifar_spec_argv,
    name,
    shell_commands,
    simple_commands,
    skip_outside_a_checkout,
)

skip_outside_a_checkout()

IMAGES = 64  # per split of the stand-in data, and the --limit of a training run
PROCESSES = 2  # torchrun's processes, bench-ddp's ranks
SECONDS = "1"  # compare's time budget: its least pairs still run (compare.PAIRS_BEFORE_VERDICT)
TIMEOUT = 1800  # seconds a command may take: counting under valgrind beside other tests

# compare and gate judge time: on one environment against itself, "no change" (0) or, at a
# one-second budget, "inconclusive" (3); a regression (1) would be a false alarm.
JUDGES_TIME = {"compare", "gate"}


@dataclass(frozen=True)
class Shown:
    """A command as a page shows it: where, the launcher's words, cifar-spec's arguments."""

    at: str
    launcher: list[str]
    argv: list[str]

    @property
    def text(self) -> str:
        return shlex.join([*self.launcher, *self.argv])


def shown_on(page: Path) -> list[Shown]:
    found = []
    for line, command in shell_commands(page):
        for words in simple_commands(command):
            argv = cifar_spec_argv(words)
            if argv is not None:
                launcher = words[: len(words) - len(argv)]
                found.append(Shown(f"{name(page)}:{line}", launcher, argv))
    return found


def option(argv: list[str], flag: str) -> str | None:
    """The value of `flag` in argv (the last one given), or None."""
    values = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == flag]
    return values[-1] if values else None


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with `flag` set to `value`: every occurrence replaced by one at the end."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        else:
            out.append(word)
    return [*out, flag, value]


def with_default(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with `flag` given, if it is not already: a size where the command names none."""
    return argv if flag in argv else [*argv, flag, value]


def smaller_int(argv: list[str], flag: str, most: int) -> list[str]:
    given = option(argv, flag)
    return with_option(argv, flag, str(most)) if given is None or int(given) > most else argv


def smallest(shown: Shown) -> tuple[list[str], str | None]:
    """(the command to run, None) at its smallest honest size, or ([], why it cannot run here)."""
    argv = list(shown.argv)
    devices = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--device"]
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        return [], "it needs a CUDA device"
    launcher = list(shown.launcher)
    if launcher and Path(launcher[0]).name == "torchrun":
        if option(launcher, "--nnodes") not in (None, "1"):
            return [], "it needs a second machine"
        launcher = [*smaller_int(launcher[:-2], "--nproc-per-node", PROCESSES), *launcher[-2:]]
    command = argv[0]
    if command == "train":
        argv = train_size(argv, int(option(launcher, "--nproc-per-node") or 1))
    elif argv[:2] == ["data", "synth"]:
        argv = with_default(with_default(argv, "--n-train", str(IMAGES)), "--n-test", str(IMAGES))
    elif argv[:2] == ["data", "calibrate"]:
        argv = with_option(
            with_option(smaller_int(argv, "--limit", IMAGES), "--epochs", "1"), "--seeds", "0"
        )
    elif command in ("bench", "gate", "compare"):
        argv = cases_size(argv)
        if command == "compare":
            argv = with_option(argv, "--seconds", SECONDS)
    elif command == "bench-ddp":
        argv = smaller_int(cases_size(argv), "--ranks", PROCESSES)
        argv = with_option(with_option(argv, "--groups", "1"), "--pairs", "2")
    return [*runner(launcher), *argv], None


def train_size(argv: list[str], processes: int) -> list[str]:
    """One epoch (two where it resumes the first) on IMAGES images; a global batch that
    divides among the processes."""
    if "--dry-run" not in argv:
        argv = with_option(
            smaller_int(argv, "--limit", IMAGES), "--epochs", "2" if "--resume" in argv else "1"
        )
    if option(argv, "--batch-size") is not None:
        argv = with_option(argv, "--batch-size", str(4 * processes))
    return argv if "--no-progress" in argv else [*argv, "--no-progress"]


def cases_size(argv: list[str]) -> list[str]:
    """One case (the page's own where it names one) and the fewest worker processes a side:
    one to time, two to count (counting refuses fewer: the report shows whether they agree)."""
    argv = with_default(with_default(argv, "--variant", "eager"), "--batch-size", "1")
    if argv[0] == "bench-ddp":
        return argv
    counts = option(argv, "--metric") in ("instructions", "both")
    return with_option(argv, "--workers", "2" if counts else "1")


def runner(launcher: list[str]) -> list[str]:
    """This environment's cifar-spec or torchrun, however the page starts it."""
    bin_folder = Path(sys.executable).parent
    if not launcher or Path(launcher[0]).name == "cifar-spec":
        return [str(bin_folder / "cifar-spec")]
    if Path(launcher[0]).name == "torchrun":
        return [str(bin_folder / "torchrun"), *launcher[1:]]
    return [sys.executable, *launcher[1:]]  # python -m cifar_spec


def page_folder(folder: Path) -> Path:
    """A reader's folder: this environment as `.venv` and `old/.venv`, a small data set."""
    from cifar_spec.synthetic import write_synthetic_cifar10

    (folder / "old").mkdir(parents=True)
    for venv in (folder / ".venv", folder / "old" / ".venv"):
        venv.symlink_to(sys.prefix, target_is_directory=True)
    write_synthetic_cifar10(folder / "data", IMAGES, IMAGES, 0, 1.0)
    return folder


def check_outputs(argv: list[str], done: subprocess.CompletedProcess, folder: Path) -> None:
    """What the command says it writes is there: a JSON document on stdout, a named file."""
    for flag in ("--json", "--markdown"):
        target = option(argv, flag)
        if target == "/dev/stdout" and flag == "--json":
            json.loads(done.stdout)  # stdout carries the document alone
        elif target is not None and not target.startswith("/dev/"):
            assert (folder / target).is_file(), f"{flag} {target} was not written"
    out = option(argv, "--out")
    if out is not None and argv[0] == "train":
        assert (folder / out / "history.json").is_file(), f"--out {out}: no history.json"


PAGES = [README, *DOCS]


def run_page(page: Path, folder: Path) -> list[str]:
    """Run the page's commands in order in `folder` (a reader's, `page_folder`); fail at the
    first that ends otherwise than the docs say. What could not run here, with why."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    # What the commands keep in the temporary folder (torchrun's logs) stays in the test's.
    temporary = folder.parent / "tmp"
    temporary.mkdir(exist_ok=True)
    env = {**os.environ, "PATH": path, "TMPDIR": str(temporary)}
    skipped = []
    for shown in shown_on(page):
        argv, why = smallest(shown)
        if why:
            skipped.append(f"{shown.at} `{shown.text}`: {why}")
            continue
        done = subprocess.run(
            argv, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        judged = argv_command(argv) in JUDGES_TIME and "--save-baseline" not in argv
        allowed = {0, 3} if judged else {0}
        assert done.returncode in allowed, (
            f"{shown.at} `{shown.text}`, run as `{shlex.join(argv)}`, exited {done.returncode}:\n"
            + "\n".join(done.stderr.strip().splitlines()[-15:])
        )
        check_outputs(argv, done, folder)
    return skipped


@pytest.mark.docs
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_cifar_spec_command_a_page_shows_runs_and_ends_as_the_docs_say(page, tmp_path):
    commands = shown_on(page)
    skipped = run_page(page, page_folder(tmp_path / "reader"))
    if commands and len(skipped) == len(commands):
        pytest.skip("; ".join(skipped))


def argv_command(argv: list[str]) -> str:
    """The cifar-spec command word of a command line to run."""
    words = argv[argv.index("cifar_spec") + 1 :] if "cifar_spec" in argv else argv[1:]
    return words[0]


def test_the_runner_finds_the_commands_of_every_page_and_shrinks_each():
    """The tier runs what the pages hold: an empty list or an unshrunk command would pass."""
    shown = [s for page in PAGES for s in shown_on(page)]
    assert len(shown) >= 20
    for s in shown:
        argv, why = smallest(s)
        if why:
            continue
        if s.argv[0] == "train" and "--dry-run" not in s.argv:
            assert option(argv, "--limit") == str(IMAGES)
        if s.argv[0] in ("bench", "gate", "compare"):
            assert option(argv, "--workers") in ("1", "2") and "--variant" in argv


def test_a_page_whose_command_fails_fails_the_tier_naming_the_line_and_the_command(tmp_path):
    """The tier can fail: a page showing a command that ends in a user's mistake (exit 2)."""
    page = tmp_path / "page.md"
    page.write_text("```sh\n.venv/bin/cifar-spec train --lr abc\n```\n")
    with pytest.raises(AssertionError, match=r"page\.md:2 `.venv/bin/cifar-spec train --lr abc`"):
        run_page(page, page_folder(tmp_path / "reader"))

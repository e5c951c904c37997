"""The option types and help layout that every `cifar-spec` command shares, defined once.

Both faces of the command line (training in `cli.train`, measuring in `cli.bench`) build
their options from these, so that a flag means one thing and is checked one way everywhere.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

import torch

from cifar_spec.bench.records import INSTRUCTIONS, TIME
from cifar_spec.errors import ConfigError

# How --json and --markdown help say what they may point at.
STREAM = " (a regular file; /dev/stdout streams it there alone, the table to stderr)"


class Parser(argparse.ArgumentParser):
    """A parser whose refusal is one line, as every other mistake's is (not argparse's usage
    block first); its subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"cifar-spec: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, unless the help says it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite_positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def percent(text: str) -> float:
    value = finite_positive(text.removesuffix("%"))
    if value >= 100:
        raise argparse.ArgumentTypeError(f"must be under 100%, got {text}")
    return value / 100


DEVICES = "auto (cuda where there is one), cpu, cuda or cuda:N"


def pick_device(name: str) -> str:
    """--device, the same in every command: auto, cpu, cuda or cuda:N, the index kept.

    Refused in one line where this machine has no such device; never changed into another.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device; use {DEVICES}") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise ConfigError(f"--device {name}: not a device cifar-spec runs on; use {DEVICES}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device here; use --device cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return name


def add_device_option(p: argparse.ArgumentParser, repeatable: bool = False) -> None:
    """--device, one meaning everywhere; a command that measures several takes it repeatedly."""
    if repeatable:
        p.add_argument(
            "--device",
            action="append",
            default=None,
            help=f"{DEVICES}, repeatable (default: every device here: the CPU, and CUDA where "
            "there is one)",
        )
    else:
        p.add_argument("--device", default="auto", help=DEVICES)


def add_batch_option(p: argparse.ArgumentParser, what: str, default: str) -> None:
    p.add_argument(
        "--batch-size",
        type=positive_int,
        action="append",
        help=f"{what}, repeatable (default: {default})",
    )


def add_workers_options(p: argparse.ArgumentParser, workers: str) -> None:
    p.add_argument("--workers", type=positive_int, default=None, help=workers)
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per worker (default: every core)",
    )


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """--no-progress, one meaning for every long command: no bar on stderr (none is drawn
    where stderr is not a terminal either)."""
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar on stderr (none is drawn when stderr is not a terminal)",
    )


def add_metric_options(p: argparse.ArgumentParser, both: bool = True) -> None:
    p.add_argument(
        "--metric",
        choices=[TIME, INSTRUCTIONS, "both"] if both else [TIME, INSTRUCTIONS],
        default=TIME,
        help=METRIC_HELP + (BOTH_HELP if both else ""),
    )
    p.add_argument(
        "--cache-sim",
        action="store_true",
        help="with instructions: simulate the caches too and show callgrind's estimated "
        "cycles (about 2-3x slower)",
    )


METRIC_HELP = (
    "time: wall time of paired rounds (CUDA events on a GPU); instructions: instruction "
    "counts under valgrind's callgrind, CPU only, which repeat across processes and do not "
    "mind the machine's load. What counts see: one thread; valgrind 3.19 hides AVX-512 and "
    "emulates FMA slowly, so oneDNN runs at AVX and oneMKL at SSE4.2 there (those kernels "
    "are counted, not the AVX-512 ones); cache misses and memory bandwidth only with "
    "--cache-sim (estimated cycles). Needs valgrind on PATH."
)
BOTH_HELP = " both: time, then counts, the counts deciding"

"""The ``cifar-spec`` command: parses arguments and calls the library, nothing more.

`build_parser` gathers the commands of both faces, training (`train.py`) and measurement
(`bench.py`: bench and gate; `compare.py`: compare and bench-ddp); `main` runs one and turns
a user's mistake into one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from cifar_spec.cli import bench, compare, train
from cifar_spec.cli.options import Parser
from cifar_spec.errors import (
    INTERRUPTED,
    MISTAKE,
    CifarSpecError,
    Interrupted,
    StoppedElsewhere,
)
from cifar_spec.files import cannot_write


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cifar-spec",
        description="The executable spec and benchmarks of a PyTorch CIFAR-10 tutorial.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parsers(commands)
    bench.add_parsers(commands)
    compare.add_parsers(commands)
    return parser


def describe_os_error(error: OSError) -> str:
    """A failed read or write that no command worded itself, in one line."""
    return cannot_write(os.fsdecode(error.filename), error)


def readable_output() -> None:
    """Names we print may hold bytes that are not UTF-8 (a path of another encoding): print
    them escaped, rather than fail on them in the middle of an error message."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")


def refuse(said: object, code: int = MISTAKE) -> int:
    """A user's mistake (or a run's stop), in one line, and its exit code; under torchrun each
    rank says its own."""
    rank = os.environ.get("RANK", "0")
    where = "" if rank == "0" else f"rank {rank}: "
    print(f"cifar-spec: error: {where}{said}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's mistake ends in one line and exit 2, a bug in a traceback.

    A user's mistake is a `CifarSpecError` or a failed read or write that names its file
    (a full disk, a folder made read-only). A NaN stop (4) and Ctrl-C (130) end in one line
    too, with their own codes (README.md's table). Anything else, a TypeError inside `fit`
    say, is cifar_spec's own bug and is not worded as the user's.
    """
    readable_output()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StoppedElsewhere:  # the rank that stopped the run says why
        return MISTAKE
    except (CifarSpecError, Interrupted) as error:
        return refuse(error, error.exit_code)
    except BrokenPipeError:  # a reader that stopped reading (`| head`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:
        if error.filename is None:
            raise
        return refuse(describe_os_error(error))
    except KeyboardInterrupt:  # outside a run's epochs: nothing was being saved
        print("cifar-spec: interrupted; nothing was saved", file=sys.stderr)
        return INTERRUPTED

"""The ``cifar-spec`` command: parses arguments and calls the library, nothing more.

`build_parser` gathers the commands of both faces, training (`train.py`) and
measurement (`bench.py`); `main` runs one and turns a user's mistake into one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from cifar_spec.cli import bench, train
from cifar_spec.errors import (
    CheckpointError,
    DataError,
    FolderBusy,
    Interrupted,
    NonFiniteLoss,
    PeerLost,
    StoppedElsewhere,
    UnsafeFile,
    WorkerError,
)
from cifar_spec.files import cannot_write


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifar-spec",
        description="The executable spec and benchmarks of a PyTorch CIFAR-10 tutorial.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parsers(commands)
    bench.add_parsers(commands)
    return parser


# What a user can cause and fix; each ends the command in one line, never a traceback.
USER_ERRORS = (
    ValueError,
    TypeError,
    MemoryError,
    DataError,
    CheckpointError,
    NonFiniteLoss,
    FolderBusy,
    UnsafeFile,
    Interrupted,
    WorkerError,
    PeerLost,
)


def describe_os_error(error: OSError) -> str:
    """A failed read or write that no command worded itself, in one line."""
    where = os.fsdecode(error.filename) if error.filename is not None else "a file"
    return cannot_write(where, error)


def readable_output() -> None:
    """Names we print may hold bytes that are not UTF-8 (a path of another encoding): print
    them escaped, rather than fail on them in the middle of an error message."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    readable_output()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StoppedElsewhere:  # the rank that stopped the run says why
        return 2
    except (*USER_ERRORS, OSError) as error:
        rank = os.environ.get("RANK", "0")  # under torchrun each rank says its own
        where = "" if rank == "0" else f"rank {rank}: "
        said = describe_os_error(error) if isinstance(error, OSError) else error
        print(f"cifar-spec: error: {where}{said}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a run's epochs: nothing was being saved
        print("cifar-spec: interrupted; nothing was saved", file=sys.stderr)
        return 2

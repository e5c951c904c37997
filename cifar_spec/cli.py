"""The ``cifar-spec`` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse

from cifar_spec import losses
from cifar_spec.model import CifarNet, format_summary


def cmd_summary(args: argparse.Namespace) -> int:
    l1, mse = losses.tutorial_example()
    print("The tutorial's loss example: inputs [1, 2, 3], targets [1, 2, 5]")
    print(f"  L1Loss  = {l1.item():.4f}  (2/3)")
    print(f"  MSELoss = {mse.item():.4f}  (4/3)")
    print()
    print("The tutorial's CNN, one 3x32x32 image:")
    print(format_summary(CifarNet()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifar-spec",
        description="The executable spec and benchmarks of a PyTorch CIFAR-10 tutorial.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    summary = commands.add_parser(
        "summary", help="print the tutorial's two loss values and a summary of its model"
    )
    summary.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)

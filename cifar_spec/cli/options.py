"""The option types and help layout that every `cifar-spec` command shares, defined once.

Both faces of the command line (training in `cli.train`, measuring in `cli.bench`) build
their options from these, so that a flag means one thing and is checked one way everywhere.
"""

from __future__ import annotations

import argparse
import math

import torch

from cifar_spec.errors import ConfigError

# How --json and --markdown help say what they may point at.
STREAM = " (a regular file; /dev/stdout streams it)"


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
    value = finite_positive(text.rstrip("%"))
    if value >= 100:
        raise argparse.ArgumentTypeError(f"must be under 100%, got {text}")
    return value / 100


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device here; use --device cpu or auto")
    return name

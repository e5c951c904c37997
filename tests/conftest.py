"""Fixtures shared by the spec's modules."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Loaded at start-up by every Python run with this folder on PYTHONPATH: each
# convolution computes its result FACTOR times. A really slower step, through
# torch's own code path, not an edited timing.
SLOW_SITE = """
import torch.nn.functional as F

_conv2d = F.conv2d


def conv2d(*args, **kwargs):
    for _ in range({factor} - 1):
        _conv2d(*args, **kwargs)
    return _conv2d(*args, **kwargs)


F.conv2d = conv2d
"""


def python_wrapper(folder: Path, name: str, pythonpath: Path | None) -> Path:
    """An executable that runs this Python, with `pythonpath` first on its path."""
    script = folder / name
    env = f"PYTHONPATH={pythonpath} " if pythonpath else ""
    script.write_text(f'#!/bin/sh\n{env}exec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return script


@pytest.fixture
def slow_site(tmp_path: Path):
    """make(factor) -> a folder whose sitecustomize.py makes every convolution `factor` x slower."""

    def make(factor: int) -> Path:
        folder = tmp_path / f"slow{factor}"
        folder.mkdir()
        (folder / "sitecustomize.py").write_text(SLOW_SITE.format(factor=factor))
        return folder

    return make


@pytest.fixture
def slow_python(tmp_path: Path, slow_site):
    """make(factor) -> a python whose convolutions are each `factor` times slower."""
    return lambda factor: python_wrapper(tmp_path, f"python-slow{factor}", slow_site(factor))


@pytest.fixture
def scripted_python(tmp_path: Path):
    """make(body) -> an executable 'python' that runs the shell `body` instead."""

    def make(body: str) -> Path:
        script = tmp_path / "fake-python"
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(0o755)
        return script

    return make

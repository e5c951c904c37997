"""The spec's shared fixtures: one small synthetic set per worker, written once, read by many;
Pythons made slower or broken on purpose, for the measurement's tests."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from pathlib import Path

import pytest
import torch
from precision import tolerance_used  # how runs compare

from cifar_spec.bench import machine
from cifar_spec.cifar10 import load_cifar10
from cifar_spec.data import DeviceData, to_device
from cifar_spec.synthetic import write_synthetic_cifar10

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
    """An executable that runs this Python, with `pythonpath` first on its path (then the
    caller's: a checkout run from another folder stays the code its workers import)."""
    script = folder / name
    env = f"PYTHONPATH={pythonpath}${{PYTHONPATH:+:$PYTHONPATH}} " if pythonpath else ""
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
def planted_python(tmp_path: Path):
    """make(name, code) -> a python that runs `code` as its sitecustomize.py at start-up."""

    def make(name: str, code: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "sitecustomize.py").write_text(code)
        return python_wrapper(tmp_path, f"python-{name}", folder)

    return make


@pytest.fixture
def slow_python(tmp_path: Path, slow_site):
    """make(factor) -> a python whose convolutions are each `factor` times slower."""
    return lambda factor: python_wrapper(tmp_path, f"python-slow{factor}", slow_site(factor))


# Loaded at start-up: every max_pool2d pools FACTOR times, the extra ones without autograd,
# so that the forward's pooling, and it alone, does FACTOR times its work. Registered as
# aten's own kernel of max_pool2d: the time lands in aten::max_pool2d_with_indices under
# aten::max_pool2d, on the CPU as on CUDA (its kernel launched FACTOR times), as a slower
# pooling in a torch build would.
SLOW_POOLING_SITE = """
import torch

_library = torch.library.Library("aten", "IMPL")


def max_pool2d(input, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    with torch.no_grad():
        for _ in range({factor} - 1):
            torch._C._nn.max_pool2d_with_indices(
                input, kernel_size, stride, padding, dilation, ceil_mode
            )
    return torch._C._nn.max_pool2d_with_indices(
        input, kernel_size, stride, padding, dilation, ceil_mode
    )[0]


_library.impl("max_pool2d", max_pool2d, "CompositeImplicitAutograd")
"""


@pytest.fixture
def slow_pooling_python(planted_python):
    """make(factor) -> a python whose every max_pool2d pools `factor` times."""
    return lambda factor: planted_python(
        f"slow-pooling{factor}", SLOW_POOLING_SITE.format(factor=factor)
    )


def hello_reply(**changed) -> str:
    """What a worker of ours says first, importing what this process did (`machine.imports`),
    with `changed` fields: for the scripted workers below that pretend to be one."""
    fields = {
        "python": "p",
        "python_version": "3",
        "cuda": None,
        "cudnn": None,
        "threads": 1,
        "git": None,
        "cpu_model": "c",
        **machine.imports(),
        **changed,
    }
    return json.dumps(fields)


@pytest.fixture
def hello_of():
    """hello_of(**changed) -> the shell command with which a scripted worker answers hello,
    those fields changed (torch_file="/elsewhere/torch/__init__.py": another torch)."""
    return lambda **changed: f"read line; echo '{hello_reply(**changed)}'"


@pytest.fixture
def hello(hello_of) -> str:
    """The shell command with which a scripted worker answers hello."""
    return hello_of()


@pytest.fixture
def scripted_python(tmp_path: Path):
    """make(body) -> an executable 'python' that runs the shell `body` instead."""

    def make(body: str) -> Path:
        script = tmp_path / "fake-python"
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(0o755)
        return script

    return make


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic CIFAR-10 of 300 training and 300 test images, seed 0. Read it, never write it."""
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar10(root, n_train=300, n_test=300, seed=0)
    return root


@pytest.fixture(scope="session")
def torchvisions_own_reader():
    """torchvision's CIFAR10 as it ships, without the md5 checks (those are real CIFAR-10's):
    for our own files, where its plain pickle.load is safe."""
    from torchvision.datasets import CIFAR10

    class Unchecked(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [["test_batch", None]]
        meta = {**CIFAR10.meta, "md5": None}

    return lambda root, train: Unchecked(str(root), train=train)


@pytest.fixture(scope="session")
def test_split(synthetic_root: Path) -> DeviceData:
    """The tutorial's split (test) of the shared set, on the CPU."""
    return to_device(load_cifar10(synthetic_root, train=False))


@pytest.fixture
def plant():
    """plant(path, kind) puts `kind` at `path`: what a hostile user leaves where a file of
    ours is read or written (a FIFO, a device, a socket, a folder, a sparse 1 GiB file)."""

    def make(path: Path, kind: str) -> None:
        if path.exists() or path.is_symlink():
            path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "link to /dev/zero":
            path.symlink_to("/dev/zero")
        elif kind == "character device":
            if os.geteuid() != 0:
                pytest.skip("mknod needs root")
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # the kernel's /dev/zero
        elif kind == "socket":
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(path))
            server.close()
        elif kind == "folder":
            path.mkdir()
        elif kind == "huge file":
            with open(path, "wb") as f:
                f.truncate(1 << 30)  # sparse: a GiB that costs no disk
        else:
            raise ValueError(kind)

    return make


@pytest.fixture
def no_workers(monkeypatch):
    """Fail the test if the command starts a worker: it was to refuse before measuring."""

    def started(self):
        raise AssertionError("a worker was started: the command measured before it refused")

    monkeypatch.setattr("cifar_spec.bench._handle.Worker.__post_init__", started)


@pytest.fixture(autouse=True)
def record_drifts(request, monkeypatch):
    """With CIFAR_SPEC_DRIFTS=FILE (tests/dispatch_matrix.py sets it), each assert_close of the
    test appends to FILE how much of its tolerance the difference used: the figures for
    docs/tolerances.md under every dispatch, from the spec's own comparisons."""
    path = os.environ.get("CIFAR_SPEC_DRIFTS")
    if not path:
        return
    compare = torch.testing.assert_close

    def recorded(actual, expected, *args, rtol=None, atol=None, **kwargs):
        if rtol is not None and atol is not None:
            used = tolerance_used(actual, expected, rtol, atol)
            line = {"test": request.node.nodeid, "rtol": rtol, "atol": atol, "used": used}
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")
        return compare(actual, expected, *args, rtol=rtol, atol=atol, **kwargs)

    monkeypatch.setattr(torch.testing, "assert_close", recorded)

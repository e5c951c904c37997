"""The spec's shared data: one small synthetic set per worker, written once, read by many."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifar_spec.data import DeviceData, load_cifar10, to_device, write_synthetic_cifar10


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic CIFAR-10 of 300 training and 300 test images, seed 0. Read it, never write it."""
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar10(root, n_train=300, n_test=300, seed=0)
    return root


@pytest.fixture(scope="session")
def test_split(synthetic_root: Path) -> DeviceData:
    """The tutorial's split (test) of the shared set, on the CPU."""
    return to_device(load_cifar10(synthetic_root, train=False))

"""A whole epoch at the tutorial's settings (batch 1, float32, CPU): its own loop against fit.

The tutorial's loop pays for a DataLoader, PIL images and ToTensor() on every
image; fit reads from one tensor and runs the library's fast exact step.
"""

import math

import pytest
import torch

from cifar_spec import bench
from cifar_spec.data import load_cifar10, to_device, write_synthetic_cifar10
from cifar_spec.loop import TrainConfig, new_run, train_epoch
from cifar_spec.tutorial import tutorial_epoch, tutorial_setup

N_IMAGES = 300


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar10(root, n_train=5, n_test=N_IMAGES)
    return root


def the_tutorials_epoch(root):
    model, loader, loss, optim = tutorial_setup(root, N_IMAGES)
    return model, lambda: tutorial_epoch(model, loader, loss, optim)


def fits_epoch(root):
    run = new_run(TrainConfig())  # the defaults: the tutorial's settings, the fast exact step
    data = to_device(load_cifar10(root, train=False))
    return run.model, lambda: train_epoch(run.step, data, 1, epoch=1)


@pytest.mark.parametrize("name, make", [("tutorial loop", the_tutorials_epoch),
                                        ("fit loop", fits_epoch)], ids=["tutorial", "fit"])
def test_an_epoch_at_the_tutorials_settings(benchmark, peaks, record, root, name, make):
    model, epoch = make(root)
    if benchmark.disabled:
        loss_sum = benchmark(epoch)
    else:
        loss_sum = benchmark.pedantic(epoch, rounds=3, warmup_rounds=1, iterations=1)
        rate = N_IMAGES / benchmark.stats.stats.median
        row = bench.loop_figures(name, rate, model, peaks(torch.device("cpu"), torch.float32))
        benchmark.extra_info.update(row)
        record(row)
    # An untrained 10-class model starts near ln(10) per image and learns slowly.
    assert math.isfinite(loss_sum) and 0.5 * N_IMAGES < loss_sum < 3 * N_IMAGES

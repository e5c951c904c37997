"""The stand-in looks like CIFAR-10 where the tutorial's training can tell: its pixel
statistics and class balance, natural images' spectrum and variety, one knob for difficulty."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cifar_spec import published
from cifar_spec.calibration import linear_probe, pixel_statistics
from cifar_spec.cifar10 import load_cifar10
from cifar_spec.data import to_device
from cifar_spec.synthetic import MAX_SIGNAL, write_synthetic_cifar10


@pytest.fixture(scope="module")
def stand_in_test_split(tmp_path_factory, torchvisions_own_reader):
    """The stand-in's whole test split (10,000 images) as torchvision's own reader reads it."""
    root = tmp_path_factory.mktemp("full")
    write_synthetic_cifar10(root, n_train=0, n_test=10_000)
    return torchvisions_own_reader(root, train=False)


@pytest.fixture(scope="module")
def statistics(stand_in_test_split):
    return pixel_statistics(stand_in_test_split.data, stand_in_test_split.targets)


def test_the_test_split_has_exactly_1000_images_a_class_as_cifar10s(statistics):
    assert statistics.class_counts == (1000,) * 10


def test_each_channels_mean_and_sd_are_cifar10s_within_002(statistics):
    # The tutorial feeds ToTensor's [0, 1] pixels unnormalised: their mean and sd set the
    # size of every gradient of the first layer, and with it how lr 0.01 behaves.
    np.testing.assert_allclose(statistics.mean, published.PIXEL_MEAN, atol=0.02, rtol=0)
    np.testing.assert_allclose(statistics.sd, published.PIXEL_SD, atol=0.02, rtol=0)


def test_its_power_spectrum_falls_about_as_one_over_f_squared_as_photographs_do(statistics):
    # White noise would give a slope of 0.
    assert -2.6 < statistics.spectrum_slope < -1.5


def test_its_scenes_differ_in_brightness_as_photographs_do(statistics):
    # CIFAR-10: about 0.14 (the old stand-in: 0.02).
    assert 0.10 < statistics.brightness_sd < 0.18


def test_few_pixels_are_clipped(statistics):
    assert statistics.clipped < 0.08  # the first stand-in clipped 11.6%


@pytest.fixture(scope="module")
def probe_at(tmp_path_factory):
    """probe_at(signal) -> test accuracy of a linear softmax on 2,000 raw-pixel images."""

    def probe(signal: float) -> float:
        root = tmp_path_factory.mktemp(f"signal{signal}")
        write_synthetic_cifar10(root, n_train=2000, n_test=1000, signal=signal)
        train, test = (to_device(load_cifar10(root, train=t)) for t in (True, False))
        return linear_probe(train, test, epochs=10)

    return probe


def test_at_signal_0_the_images_say_nothing_of_their_class(probe_at):
    # Chance is 10%; over 1,000 test images a probe that learned nothing scores within
    # 4 binomial sds of it (sd 0.95%).
    assert probe_at(0.0) < 0.10 + 4 * (0.1 * 0.9 / 1000) ** 0.5


def test_the_signal_knob_orders_the_difficulty(probe_at):
    # Each step is far beyond the probe's noise (about 1.5 points over 1,000 images).
    harder, calibrated, easier = (probe_at(s) for s in (0.5, 1.0, MAX_SIGNAL))
    assert harder + 0.05 < calibrated < easier - 0.05


def test_a_signal_outside_its_range_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"signal must lie in \[0, 2.5\].*got 3"):
        write_synthetic_cifar10(tmp_path, 10, 5, signal=3)
    assert not any(tmp_path.iterdir())


def test_train_and_test_share_the_classes_objects_so_a_probe_transfers(probe_at):
    # Well above chance on the held-out split: what is learned on one split is there in
    # the other, as in CIFAR-10.
    assert probe_at(1.0) > 0.2


WRITE_AND_HASH = """
import hashlib, sys
from cifar_spec.synthetic import write_synthetic_cifar10
folder = write_synthetic_cifar10(sys.argv[1], n_train=500, n_test=500, seed=0)
print(hashlib.sha256((folder / "test_batch").read_bytes()).hexdigest())
"""


def numpy_levels() -> list[str]:
    """numpy's SIMD levels this CPU runs, above the baseline it was built for."""
    from numpy._core import _multiarray_umath as umath

    return [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]


def test_the_same_seed_writes_the_same_bytes_under_every_simd_level_numpy_offers(tmp_path):
    # numpy picks its exp, std and FFT kernels by CPU at run time; a pixel on a rounding
    # edge would come out another way on another CPU. Here each level is turned off in turn.
    levels = numpy_levels()
    hashes = set()
    for k in range(len(levels) + 1):
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(levels[k:])}
        out = tmp_path / f"level{k}"
        done = subprocess.run(
            [sys.executable, "-c", WRITE_AND_HASH, str(out)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        hashes.add(done.stdout.strip())
    assert len(hashes) == 1, f"{len(hashes)} different test splits under {levels}"

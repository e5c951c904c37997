"""A whole epoch at the tutorial's settings (batch 1, float32, CPU): its own loop against fit.

The tutorial's loop pays for a DataLoader, PIL images and ToTensor() on every
image; fit reads from one tensor and runs the library's fast exact step. The
speed-up comes from paired epochs of the two loops in the same worker processes.
"""

import math

import pytest

from cifar_spec.bench import cases
from cifar_spec.bench.records import Case


@pytest.mark.parametrize("name", list(cases.LOOPS), ids=["tutorial", "fit"])
def test_an_epoch_at_the_tutorials_settings(benchmark, suite, record, tmp_path, name):
    loop = cases.build_loop(name, str(tmp_path))
    if benchmark.disabled:
        loss_sum = benchmark(loop.step)
    else:
        loss_sum = benchmark.pedantic(loop.step, rounds=3, warmup_rounds=1, iterations=1)
        if suite is not None:
            row = suite.measure(Case("cpu", name, 1))
            benchmark.extra_info.update(row)
            record(row)
    # An untrained 10-class model starts near ln(10) per image and learns slowly.
    assert math.isfinite(loss_sum) and 0.5 * loop.images < loss_sum < 3 * loop.images

"""Shared fixtures for the spec and the benchmarks.

Under pytest-xdist each worker is its own process with torch's default of one
thread per core; two workers on two cores would then run four threads and
slow each other down. Each worker therefore takes its share of the cores.
"""

from __future__ import annotations

import os

import pytest
import torch

# pytester runs pytest inside a test: the gate's comparison is tested that way.
pytest_plugins = ["pytester"]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pytest_configure(config: pytest.Config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, available_cores() // int(workers)))
    # Benchmarks are timed only when asked (--benchmark-only or --benchmark-enable);
    # in a plain run, and under xdist, each runs once as a test. This runs before
    # pytest-benchmark reads the option (its pytest_configure is trylast).
    if not (
        config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False)
    ):
        config.option.benchmark_disable = True


CUDA_SKIP = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"
)


@pytest.fixture(
    params=["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA_SKIP])],
)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each test that takes it runs on the CPU and, where there is one, on a GPU."""
    return torch.device(request.param)

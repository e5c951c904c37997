"""The spec's pytest configuration, shipped with the package.

`pytest --pyargs cifar_spec` in any environment loads this file as the root of
the spec and the benchmarks (packaged as `cifar_spec.spec` and
`cifar_spec.benchmarks`); in a checkout, the top-level conftest.py imports it.

Under pytest-xdist each worker is its own process with torch's default of one
thread per core; two workers on two cores would then run four threads and
slow each other down. Each worker therefore takes its share of the cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cifar_spec.bench.machine import available_cores

# pytester runs pytest inside a test: the gate's comparison is tested that way.
pytest_plugins = ["pytester"]


MARKERS = [
    "cuda: needs a CUDA device; skipped cleanly without one",
    "slow: takes more than a few seconds on a 2-core CPU",
    "docs: runs the commands README.md and docs/ show (`pytest -m docs`; left out of a plain run)",
    "cifar10: needs real CIFAR-10 on disk (CIFAR_SPEC_CIFAR10); skipped with the reason without",
]


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
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


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this run's, the same for all its xdist workers (each has a base folder of
    its own, side by side in the run's), for what the workers share."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def inductor_cache(run_folder: Path):
    """One torch.compile cache for the session, shared by its xdist workers and the processes
    they start: a graph compiled by one test is found by the next (26 s cold against 6 s on
    a Zen 1), and no run finds what an earlier one, or another torch, left in the machine's
    own cache, so every run compiles as a fresh CI machine does."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(run_folder / "torchinductor")
    yield
    if before is None:
        del os.environ["TORCHINDUCTOR_CACHE_DIR"]
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each test that takes it runs on the CPU and, where there is one, on a GPU."""
    return torch.device(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The GPU half is marked here, not in the fixture's params: this file is imported
    # before its markers are registered, and an installed run would warn on them.
    no_gpu = pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device on this machine"
    )
    # The slow tests first: each starts worker processes for a minute or two, and one
    # that began last would end the run on one core while the other idles.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("device") == "cuda":
            item.add_marker(pytest.mark.cuda)
            item.add_marker(no_gpu)

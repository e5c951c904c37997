"""The benchmarks' shared state: worker processes, the rows of the final table.

`pytest --benchmark-only` times them; plain `pytest` runs each once, untimed
(the root conftest.py turns pytest-benchmark's timing off then).

Each timed benchmark records two things. pytest-benchmark's own statistics
hold the time of one step in this process (iterations = steps per round), so
that `--benchmark-compare` compares step times. The figures in the table and
in `extra_info` (speed-up with its 95% interval, spread, roofline fraction)
come from `cifar_spec.bench.suite`: paired rounds against the baseline in
`--paired-workers` fresh processes.
"""

from __future__ import annotations

import pytest
import torch

from cifar_spec import plot
from cifar_spec.bench import figures
from cifar_spec.bench.suite import WORKERS, Suite

ROWS_KEY = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--paired-workers",
        type=int,
        default=WORKERS,
        help="worker processes for the paired figures (speed-up, spread); 0 for "
        "pytest-benchmark's own per-step timing only. Default: %(default)s",
    )


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest):
    """Worker processes for the paired figures, started on first use; None with 0 workers."""
    count = request.config.getoption("--paired-workers")
    if count < 1:
        yield None
        return
    with Suite(workers=count) as running:
        yield running


@pytest.fixture(autouse=True)
def flush_denormals():
    """As in the workers (see cifar_spec/worker.py): a memorized batch must not time denormals."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)  # torch's default


@pytest.fixture
def record(request: pytest.FixtureRequest):
    """Keeps a benchmark's figures for the table printed at the end of the run."""
    return request.config.stash.setdefault(ROWS_KEY, []).append


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info.update(figures.machine_info())


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS_KEY, [])
    if not rows:
        return
    terminalreporter.section("training-step throughput")
    terminalreporter.write_line(figures.format_table(rows))
    terminalreporter.write_line(
        "speed-up: the median over quads of paired rounds (A B B A) against the baseline "
        "(eager, or the tutorial's loop), with its 95% interval (the wider of a two-level "
        "bootstrap over worker processes and quads and a t-interval of the processes' "
        "medians); spread: IQR / median of the step time; noisy: a spread above 10%"
    )
    chart = plot.throughput_chart(rows, config.rootpath / ".benchmarks" / "throughput.png")
    terminalreporter.write_line(
        f"chart: {chart}" if chart else f"no chart: {plot.INSTALL_HINT} draws it"
    )

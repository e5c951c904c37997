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

import sys

import pytest
import torch

from cifar_spec import plot
from cifar_spec.bench import callgrind, chart, machine, report
from cifar_spec.bench.counts import as_rows
from cifar_spec.bench.records import Case
from cifar_spec.bench.suite import WORKERS, Suite, worker_threads

ROWS_KEY = pytest.StashKey[list]()
COUNT_ROWS_KEY = pytest.StashKey[list]()
CASES_KEY = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--paired-workers",
        type=int,
        default=WORKERS,
        help="worker processes for the paired figures (speed-up, spread); 0 for "
        "pytest-benchmark's own per-step timing only. Default: %(default)s",
    )
    parser.addoption(
        "--count-instructions",
        action="store_true",
        help="also count each timed CPU step's instructions under valgrind's callgrind (2 "
        "processes, one thread; torch.compile is not counted: under valgrind it compiles "
        "for many minutes); the counts go into extra_info, saved with the benchmark, and a "
        "table. Needs valgrind (see docs/instruction-counts.md)",
    )


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected: only what will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The CPU step cases selected, for counting them all in the same processes."""
    found = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("device") == "cpu" and "variant" in params:
            case = Case("cpu", params["variant"], params["batch"])
            if "compile" not in case.variant:
                found.append(case)
    config.stash[CASES_KEY] = found


class Counts:
    """Instruction counts of every collected CPU case, taken at first use."""

    def __init__(self, cases: list[Case]) -> None:
        self.cases = cases
        self.rows: dict | None = None
        self.failed: Exception | None = None

    def row(self, case: Case) -> dict | None:
        if case not in self.cases:
            return None
        if self.failed:  # counted once: a failure is not paid for again by every benchmark
            raise self.failed
        if self.rows is None:
            try:
                processes = callgrind.count_all(
                    {"w": sys.executable}, 2, self.cases, expected={"w": machine.own_code()}
                )["w"]
            except Exception as error:
                self.failed = error
                raise
            self.rows = {
                Case(r["device"], r["variant"], r["batch"]): r
                for r in as_rows(processes, self.cases)
            }
        return self.rows.get(case)


@pytest.fixture(scope="session")
def counts(request: pytest.FixtureRequest):
    """Counts.row(case) under --count-instructions, else None."""
    if not request.config.getoption("--count-instructions"):
        return None
    callgrind.check_tools()
    return Counts(request.config.stash.get(CASES_KEY, []))


@pytest.fixture
def record_count(request: pytest.FixtureRequest):
    return request.config.stash.setdefault(COUNT_ROWS_KEY, []).append


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest):
    """Worker processes for the paired figures, started on first use; None with 0 workers, and
    in an untimed run, which asks for no figure (its workers were three starts of torch for
    nothing, 9 s of CPU a pytest process on a Zen 1)."""
    count = request.config.getoption("--paired-workers")
    if count < 1 or request.config.option.benchmark_disable:
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
    machine_info.update(machine.describe(worker_threads(None)))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    counted = config.stash.get(COUNT_ROWS_KEY, [])
    if counted:
        terminalreporter.section("instructions per step (callgrind)")
        terminalreporter.write_line(report.format_rows(counted))
        terminalreporter.write_line(report.COUNTED)
    rows = config.stash.get(ROWS_KEY, [])
    if not rows:
        return
    terminalreporter.section("training-step throughput")
    terminalreporter.write_line(report.format_table(rows))
    terminalreporter.write_line(
        "speed-up: the median over quads of paired rounds (A B B A) against the baseline "
        "(eager, or the tutorial's loop), with its 95% interval (the wider of a two-level "
        "bootstrap over worker processes and quads and a t-interval of the processes' "
        "medians); spread: IQR / median of the step time; noisy: a spread above 10%"
    )
    drawn = chart.throughput_chart(rows, config.rootpath / ".benchmarks" / "throughput.png")
    terminalreporter.write_line(
        f"chart: {drawn}" if drawn else f"no chart: {plot.INSTALL_HINT} draws it"
    )

"""The benchmarks' shared state: peaks measured once per session, rows for the final table.

`pytest --benchmark-only` times them; plain `pytest` runs each once, untimed
(the root conftest.py turns pytest-benchmark's timing off then).
"""

from __future__ import annotations

import pytest
import torch

from cifar_spec import bench, plot

ROWS_KEY = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def peaks() -> dict:
    """(device, dtype) -> Peak, measured on first use, in this process."""
    cache: dict = {}

    def peak(device: torch.device, dtype: torch.dtype) -> bench.Peak:
        if (device.type, dtype) not in cache:
            cache[device.type, dtype] = bench.measure_peak(device, dtype)
        return cache[device.type, dtype]

    return peak


@pytest.fixture
def record(request: pytest.FixtureRequest):
    """Keeps a benchmark's figures for the table printed at the end of the run."""
    return request.config.stash.setdefault(ROWS_KEY, []).append


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info.update(bench.machine_info())
    machine_info["fingerprint"] = bench.fingerprint()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list,
                                 output_json: dict) -> None:
    rows = [b["extra_info"] for b in output_json["benchmarks"] if "images_per_s" in b["extra_info"]]
    bench.add_speedups(rows)  # in place: the JSON gets each speed-up too


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    rows = bench.add_speedups(config.stash.get(ROWS_KEY, []))
    if not rows:
        return
    terminalreporter.section("training-step throughput")
    terminalreporter.write_line(bench.format_table(rows))
    chart = plot.throughput_chart(rows, config.rootpath / ".benchmarks" / "throughput.png")
    terminalreporter.write_line(
        f"chart: {chart}" if chart else f"no chart: {plot.INSTALL_HINT} draws it")

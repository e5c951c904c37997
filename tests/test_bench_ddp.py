"""The DDP scaling benchmark: one process and N processes, paired in the same run."""

import sys
import time
from pathlib import Path

import pytest

from cifar_spec.bench import bench_ddp
from cifar_spec.cli import main
from cifar_spec.errors import WorkerError


def test_the_scaling_figure_pairs_one_process_with_two_and_states_the_efficiency():
    row = bench_ddp.scaling("eager", batch=2, ranks=2, groups=1, pairs=2)
    speedup = row["speedup"]
    assert speedup["samples"] == 1 and speedup["processes"] == 1  # one quad: A B, B A
    assert speedup["ci_low"] <= speedup["median"] <= speedup["ci_high"]
    assert row["efficiency"] == pytest.approx(speedup["median"] / 2)
    assert row["alone_images_per_s"] > 0 and row["together_images_per_s"] > 0


def test_bench_ddp_refuses_a_variant_ddp_cannot_run_in_one_line(capsys):
    variant = "channels_last+one_call_sgd+cuda_graph"
    assert main(["bench-ddp", "--variant", variant]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "all-reduce between processes" in err


def running(pid: int) -> bool:
    """Whether `pid` runs: not gone, and not a zombie that only waits to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def all_end(pids: list[int], seconds: float = 10.0) -> bool:
    """Whether every one of `pids` ends within `seconds`: a killed process dies when the kernel
    next runs it, a moment after the kill (on a loaded machine, after the test looked)."""
    deadline = time.monotonic() + seconds
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# A rank that starts a process (as torch.compile starts its compile workers), says its pid
# in a file RANK in the folder it is given, and then hangs, as a rank stuck in an exchange does.
HUNG_RANK = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(os.path.join(sys.argv[1], os.environ["RANK"]), "w") as said:
    said.write(str(child.pid))
time.sleep(600)
"""


def test_a_group_out_of_time_is_stopped_whole_with_what_its_ranks_started_in_one_line(
    tmp_path, monkeypatch
):
    hung = [sys.executable, "-c", HUNG_RANK, str(tmp_path)]
    monkeypatch.setattr(bench_ddp, "rank_command", lambda *args: hung)
    monkeypatch.setattr(bench_ddp, "LAUNCH_TIMEOUT", 5.0)
    with pytest.raises(WorkerError, match="still running after 5 s") as stopped:
        bench_ddp.run_group("eager", batch=1, ranks=2, pairs=2)
    assert len(str(stopped.value).splitlines()) == 1
    children = [int(path.read_text()) for path in sorted(tmp_path.iterdir())]
    assert len(children) == 2 and all_end(children)


def test_a_speed_up_from_one_group_of_two_quads_is_marked_as_a_range_not_a_95_percent_ci(
    monkeypatch,
):
    # The run: --ranks 4 --groups 1 --pairs 4 gives 2 quads, whose range is a 50%
    # interval. Rank 0's pairs are given here, (alone, together) seconds per step.
    pairs = [(0.010, 0.021), (0.010, 0.022), (0.011, 0.021), (0.010, 0.020)]
    monkeypatch.setattr(bench_ddp, "run_group", lambda *args: pairs)
    lines = []
    rows = bench_ddp.scale_all(["eager"], [64], 4, 1, 4, lines.append)
    speedup = rows[0]["speedup"]
    assert speedup["samples"] == 2 and speedup["confidence"] == 0.5
    assert "not a 95% CI" in speedup["ci_note"]
    row_line = lines[1]
    assert f"[{speedup['ci_low']:.2f}, {speedup['ci_high']:.2f}]*" in row_line
    assert lines[-1] == f"* {speedup['ci_note']}"  # the legend under the table

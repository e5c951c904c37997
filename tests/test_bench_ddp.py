"""The DDP scaling benchmark: one process and N processes, paired in the same run."""

import pytest

from cifar_spec.bench import bench_ddp
from cifar_spec.cli import main


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

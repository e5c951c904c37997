"""What a step time means: FLOPs counted right, a peak that bounds, the table's figures."""

import sys

import pytest
import torch

from cifar_spec.bench import cases, figures, machine, report
from cifar_spec.model import CifarNet
from cifar_spec.step import StepOptions


def test_the_forward_pass_costs_24_7_mflop_per_image():
    # conv: 2*3*25*32*32*32 + 2*32*25*32*16*16 + 2*32*25*64*8*8; linear: 2*1024*64 + 2*64*10
    assert (
        sum(figures.layer_flops(CifarNet())) == 4_915_200 + 13_107_200 + 6_553_600 + 131_072 + 1_280
    )


def test_a_training_step_costs_three_forwards_less_the_first_layers_input_gradient():
    assert figures.training_flops_per_image(CifarNet()) == 3 * 24_708_352 - 4_915_200 == 69_209_856


@pytest.mark.parametrize("variant", ["eager", "channels_last"])
def test_torchs_flop_counter_on_a_real_step_agrees_with_the_count_by_hand(variant):
    assert figures.counted_flops_per_image(cases.VARIANTS[variant]) == 69_209_856


def test_the_peak_is_the_best_of_several_products_and_names_its_shape():
    peak = figures.measure_peak("cpu", torch.float32, tries=2)
    assert peak.best >= peak.median > 1e8  # any CPU of this decade does 0.1 GFLOP/s
    assert peak.shape.startswith(("matmul", "conv")) and peak.precision == "float32"


PEAK = figures.Peak(best=1e11, median=9e10, shape="matmul 2048", tries=3, precision="float32")


def test_the_figures_follow_from_the_rate_and_the_peak():
    row = figures.rate_figures("cpu", "eager", 4, 400.0, 69_209_856, PEAK)
    assert row["achieved_flops"] == 400 * 69_209_856
    assert row["roofline_fraction"] == pytest.approx(400 * 69_209_856 / 1e11)
    assert not row["peak_underestimated"]


def test_a_rate_above_the_peak_is_shown_as_an_underestimated_peak_not_a_fraction():
    row = figures.rate_figures("cpu", "channels_last", 256, 2000.0, 69_209_856, PEAK)
    assert row["roofline_fraction"] is None and row["peak_underestimated"]
    assert "peak underestimated" in report.format_table([{**row, "speedup": 1.2}])


def test_the_table_shows_each_speed_up_with_its_interval_and_marks_noisy_rows():
    base = figures.rate_figures("cpu", "eager", 1, 250.0, 69_209_856, PEAK)
    fast = figures.rate_figures("cpu", "channels_last", 1, 300.0, 69_209_856, PEAK)
    table = report.format_table(
        [
            {**base, "speedup": 1.0, "spread": 0.03},
            {**fast, "speedup": 1.2, "speedup_ci": [1.15, 1.26], "spread": 0.14, "noisy": True},
        ]
    )
    eager_line, fast_line = table.splitlines()[1:]
    assert "1.00x" in eager_line and "noisy" not in eager_line and "3.0%" in eager_line
    assert "1.20x [1.15, 1.26]" in fast_line and fast_line.endswith("noisy")


def test_the_noisy_mark_follows_the_spread_the_table_shows_at_the_docs_ten_percent():
    base = figures.rate_figures("cpu", "eager", 64, 2000.0, 69_209_856, PEAK)
    # 9.6% shown, and a row marked noisy for a figure the table leaves out: no mark.
    quiet = report.format_table([{**base, "speedup": 1.0, "spread": 0.096, "noisy": True}])
    loud = report.format_table([{**base, "speedup": 1.0, "spread": 0.104, "noisy": False}])
    assert "9.6%" in quiet and not quiet.endswith("noisy")
    assert "10.4%" in loud and loud.endswith("noisy")


def test_the_machine_description_names_the_hardware_the_threads_and_every_version():
    info = machine.describe(threads=3)
    assert {
        "cpu_model",
        "threads",
        "torch",
        "torchvision",
        "cuda",
        "cudnn",
        "python",
        "python_version",
        "git",
    } <= info.keys()
    assert info["torch"] == torch.__version__ and info["threads"] == 3
    assert info["python"] == sys.executable


def test_flops_are_counted_without_compiling_or_capturing():
    options = StepOptions(channels_last=True, compile=True)
    assert figures.counted_flops_per_image(options) == 69_209_856

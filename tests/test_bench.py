"""The benchmark helpers and the gate: FLOPs counted right, regressions caught, floors held."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifar_spec import bench
from cifar_spec.model import CifarNet
from cifar_spec.step import StepOptions

STORED = Path(__file__).parent / "data"


def test_the_forward_pass_costs_24_7_mflop_per_image():
    # conv: 2*3*25*32*32*32 + 2*32*25*32*16*16 + 2*32*25*64*8*8; linear: 2*1024*64 + 2*64*10
    assert (
        sum(bench.layer_flops(CifarNet())) == 4_915_200 + 13_107_200 + 6_553_600 + 131_072 + 1_280
    )


def test_a_training_step_costs_three_forwards_less_the_first_layers_input_gradient():
    assert bench.training_flops_per_image(CifarNet()) == 3 * 24_708_352 - 4_915_200 == 69_209_856


def test_the_peak_is_the_best_of_several_timed_matrix_products():
    peak = bench.measure_peak("cpu", torch.float32, tries=3)
    assert peak.tries == 3 and peak.size >= 256
    assert peak.best >= peak.median > 1e8  # any CPU of this decade does 0.1 GFLOP/s
    assert peak.precision == "float32"


@pytest.mark.parametrize(
    "options, device, reason",
    [
        (StepOptions(one_call_sgd=True, cuda_graph=True), "cpu", "CUDA graphs need a CUDA device"),
    ],
    ids=["cuda-graph-on-cpu"],
)
def test_a_variant_the_device_cannot_run_says_why(options, device, reason):
    assert bench.unsupported(options, device) == reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_variants_are_skipped_with_a_reason_where_there_is_no_gpu():
    assert bench.unsupported(StepOptions(), "cuda") == "no CUDA device on this machine"


def test_each_variant_has_a_unique_name_and_eager_is_the_baseline():
    assert list(bench.VARIANTS)[0] == "eager" == StepOptions().name
    assert len(set(bench.VARIANTS)) == len(bench.VARIANTS) == 10


def row(variant, batch, rate, device="cpu", roofline=0.5):
    return {
        "device": device,
        "variant": variant,
        "batch": batch,
        "images_per_s": rate,
        "roofline_fraction": roofline,
    }


def test_speed_ups_compare_with_eager_of_the_same_device_and_batch_only():
    rows = bench.add_speedups(
        [
            row("eager", 1, 100),
            row("bf16", 1, 300),
            row("eager", 64, 1000),
            row("bf16", 64, 1500),
            row("bf16", 64, 9000, device="cuda"),
        ]
    )
    assert [r["speedup"] for r in rows] == [1.0, 3.0, 1.0, 1.5, None]
    table = bench.format_table(rows)
    assert "3.00x" in table and "1.50x" in table and "50.0%" in table


def test_the_figures_follow_from_the_step_time_and_the_peak():
    case = bench.build(StepOptions(), "cpu", 4)
    peak = bench.Peak(best=1e11, median=9e10, size=2048, tries=5, precision="float32")
    figures = bench.figures(case, 0.01, peak)
    assert figures["images_per_s"] == 400
    assert figures["achieved_flops"] == 400 * 69_209_856
    assert figures["roofline_fraction"] == pytest.approx(400 * 69_209_856 / 1e11)
    assert figures["peak_dtype"] == "float32" and figures["variant"] == "eager"


def test_the_fingerprint_differs_by_hardware_and_torch_version():
    info = {"cpu_model": "AMD EPYC", "torch_threads": 2, "torch": "2.14.1"}
    assert bench.fingerprint(info) == "AMD_EPYC-2t-torch2.14.1"
    assert bench.fingerprint({**info, "gpu_name": "NVIDIA H100 80GB HBM3"}).startswith(
        "NVIDIA_H100"
    )
    assert bench.fingerprint({**info, "torch": "2.15.0"}) != bench.fingerprint(info)


def test_machine_info_names_the_cpu_threads_and_versions():
    info = bench.machine_info()
    assert {"cpu_model", "torch_threads", "torch", "torchvision", "cuda", "cudnn"} <= info.keys()
    assert info["torch"] == torch.__version__


# The gate, part 2: floors on hardware-independent figures, on stored result files.

FLOORS = {"channels_last": {"64": {"speedup": 1.05, "roofline_fraction": 0.5}}}


def test_a_stored_good_run_passes_the_floors():
    rows = bench.load_rows(STORED / "bench_good.json")
    assert rows and bench.check_floors(rows, FLOORS) == []


def test_a_stored_regressed_run_fails_the_floors_naming_variant_figure_and_floor():
    failures = bench.check_floors(bench.load_rows(STORED / "bench_regressed.json"), FLOORS)
    assert failures == ["cpu channels_last batch 64: speedup 0.8 is below the floor 1.05"]


def test_floors_with_no_figure_in_the_run_are_named():
    rows = [row("eager", 64, 100), row("channels_last", 64, 120)]
    floors = {"_note": "text", "channels_last": {"64": {}, "256": {}}, "renamed": {"1": {}}}
    assert bench.unmeasured_floors(rows, floors) == ["channels_last batch 256", "renamed batch 1"]


def test_the_committed_floors_hold_for_the_stored_good_run():
    floors = json.loads((Path(__file__).parents[1] / "benchmarks/floors/cpu.json").read_text())
    assert floors and bench.check_floors(bench.load_rows(STORED / "bench_good.json"), floors) == []


# The gate, part 1: pytest-benchmark's comparison against this hardware's baseline.

INNER_BENCHMARK = """
import time

def test_step(benchmark):
    benchmark.pedantic(time.sleep, args=(0.002,), rounds=5, iterations=1)
"""


def scale_baseline(storage: Path, factor: float) -> None:
    saved = bench.find_baseline(storage)
    data = json.loads(saved.read_text())
    for b in data["benchmarks"]:
        b["stats"] = {
            k: v * factor
            if k in {"min", "max", "mean", "median", "stddev", "iqr", "q1", "q3", "total"}
            else v
            for k, v in b["stats"].items()
        }
    saved.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "factor, regressed",
    [(0.1, True), (10.0, False)],
    ids=["baseline-10x-faster-fails", "baseline-10x-slower-passes"],
)
def test_the_baseline_comparison_fails_on_a_regression_and_passes_otherwise(
    pytester, monkeypatch, factor, regressed
):
    # Under xdist the inner pytest would see the worker's variables and turn timing off.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(INNER_BENCHMARK)
    storage = bench.baseline_storage(pytester.path / ".benchmarks")
    saved = pytester.runpytest_subprocess(
        "--benchmark-only", f"--benchmark-storage={storage}", "--benchmark-save=baseline"
    )
    assert saved.ret == 0 and bench.find_baseline(storage) is not None
    scale_baseline(storage, factor)
    result = pytester.runpytest_subprocess(*bench.compare_args(storage, 50))
    assert (result.ret != 0) == regressed
    assert ("Performance has regressed" in result.stdout.str() + result.stderr.str()) == regressed


def test_the_gate_without_a_baseline_says_how_to_make_one(tmp_path, capsys):
    from cifar_spec.cli import main

    assert main(["gate", "--storage", str(tmp_path)]) == 2
    assert "gate --save-baseline" in capsys.readouterr().err


def test_the_workflows_are_valid_github_actions_files():
    checker = Path(sys.executable).with_name("check-jsonschema")
    if not checker.exists():
        checker = shutil.which("check-jsonschema")
    workflows = sorted((Path(__file__).parents[1] / ".github" / "workflows").glob("*.yml"))
    assert len(workflows) == 2
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", *map(str, workflows)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr

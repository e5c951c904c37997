"""The benchmark cases: which variants exist, which a device cannot run and why, what a case is."""

import json
import math
from pathlib import Path

import pytest
import torch

from cifar_spec.bench import cases, report
from cifar_spec.errors import BadRound
from cifar_spec.step import StepOptions


def test_each_variant_has_a_unique_name_and_eager_is_the_baseline():
    assert list(cases.VARIANTS)[0] == "eager" == StepOptions().name
    assert len(set(cases.VARIANTS)) == len(cases.VARIANTS) == 10


@pytest.mark.parametrize(
    "options, device, reason",
    [
        (StepOptions(one_call_sgd=True, cuda_graph=True), "cpu", "CUDA graphs need a CUDA device"),
    ],
    ids=["cuda-graph-on-cpu"],
)
def test_a_variant_the_device_cannot_run_says_why(options, device, reason):
    assert cases.skip_reason(options, device) == reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_variants_are_skipped_with_a_reason_where_there_is_no_gpu():
    assert cases.skip_reason(StepOptions(), "cuda") == "no CUDA device on this machine"


@pytest.mark.skipif(
    torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU computes bfloat16 natively"
)
def test_bfloat16_is_not_timed_on_a_cpu_that_would_emulate_it():
    assert "no native bfloat16" in cases.skip_reason(StepOptions(bf16=True), "cpu")
    assert cases.unsupported(StepOptions(bf16=True), "cpu") is None  # it can run, slowly


def test_a_case_trains_on_its_fixed_batch():
    case = cases.build(StepOptions(), "cpu", 4)
    before = [p.detach().clone() for p in case.model.parameters()]
    loss = case.step()
    assert torch.isfinite(loss) and loss.shape == ()
    assert all(not torch.equal(a, p) for a, p in zip(before, case.model.parameters()))


@pytest.mark.parametrize("name", list(cases.LOOPS))
def test_a_loop_case_is_one_epoch_of_the_synthetic_test_split(tmp_path, name):
    loop = cases.build_loop(name, str(tmp_path))
    loss_sum = loop.step()
    # An untrained 10-class model starts near ln(10) per image.
    assert 0.5 * cases.LOOP_IMAGES < loss_sum < 3 * cases.LOOP_IMAGES


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, rounds", [("fit loop", 50), ("tutorial loop", 10)], ids=["fit", "tutorial"]
)
def test_a_loop_benchmark_gives_the_same_finite_loss_sum_in_every_one_of_many_rounds(
    tmp_path, name, rounds
):
    # A round times the loop's step once or a few times; a worker asks for about 40 (its
    # warm-up and 8-16 pairs). The tutorial's loop, slower, shares the same restore.
    loop = cases.build_loop(name, str(tmp_path))
    sums = [loop.step() for _ in range(rounds)]
    assert math.isfinite(sums[0]) and sums == [sums[0]] * rounds


def too_large_a_learning_rate(case: cases.StepBench | cases.LoopBench) -> None:
    """Every round of `case` from now on starts at lr 1e30: its weights overflow in a step."""
    case.snapshot.optimizer.param_groups[0]["lr"] = 1e30
    case.snapshot.take()


@pytest.mark.parametrize("name", list(cases.LOOPS), ids=["tutorial", "fit"])
def test_a_loop_round_that_computes_a_non_finite_loss_is_an_error_naming_the_case(tmp_path, name):
    loop = cases.build_loop(name, str(tmp_path))
    too_large_a_learning_rate(loop)
    with pytest.raises(BadRound, match=f"case '{name}': an epoch from its saved weights .*nan"):
        loop.step()


def test_a_loop_round_with_another_loss_sum_than_the_first_is_an_error_naming_the_case(tmp_path):
    loop = cases.build_loop("fit loop", str(tmp_path))
    first = loop.step()
    loop.snapshot.optimizer.param_groups[0]["lr"] = 0.02  # the state every epoch starts from
    loop.snapshot.take()
    with pytest.raises(BadRound, match=f"case 'fit loop': .* the first gave {first!r}"):
        loop.step()


def test_an_unknown_loop_is_refused_naming_the_loops(tmp_path):
    with pytest.raises(ValueError, match="tutorial loop, fit loop"):
        cases.build_loop("my loop", str(tmp_path))


ROOT = Path(__file__).parents[1]


def run_step_benchmark(pytester, storage: Path, *extra: str):
    """The project's own eager batch-1 benchmark, timed, in a fresh pytest."""
    return pytester.runpytest_subprocess(
        str(ROOT / "benchmarks" / "test_throughput.py"),
        "-k",
        "cpu-eager-1",
        "--benchmark-only",
        "--paired-workers",
        "0",
        f"--benchmark-storage={storage}",
        "-p",
        "no:cacheprovider",
        *extra,
    )


@pytest.mark.slow
def test_pytest_benchmarks_comparison_of_step_times_fails_on_a_really_slower_step(
    pytester, monkeypatch, slow_site
):
    # Under xdist the inner pytest would see the worker's variables.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    # One thread: two busy threads on a core another test is using would time the
    # scheduler (a batch-1 step of 4 ms was seen taking 300 ms), not the step.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    storage = pytester.path / "storage"
    saved = run_step_benchmark(pytester, storage, "--benchmark-save=before")
    assert saved.ret == 0, saved.stdout.str()
    [stored] = storage.glob("*/*.json")
    bench_json = json.loads(stored.read_text())["benchmarks"][0]
    # pytest-benchmark holds the time of one step: rounds of several steps, divided.
    assert bench_json["stats"]["iterations"] > 1
    assert bench_json["stats"]["median"] < 0.05  # a batch-1 step, not a round

    # No check that the same code passes: two runs seconds apart on a loaded machine were
    # seen 1.6x apart, which is why `compare` interleaves its rounds. A step with its
    # forward convolutions 10x (about 3-4x in all) is beyond that.
    monkeypatch.setenv("PYTHONPATH", str(slow_site(10)))
    slower = run_step_benchmark(
        pytester, storage, "--benchmark-compare", "--benchmark-compare-fail=median:50%"
    )
    assert slower.ret != 0
    assert "Performance has regressed" in slower.stdout.str() + slower.stderr.str()


def bench_row(note: str) -> dict:
    row = {"device": "cpu", "variant": "channels_last", "batch": 1, "images_per_s": 100.0}
    row.update(spread=0.01, speedup=1.2, speedup_ci=[1.1, 1.3], roofline_fraction=0.1)
    return {**row, "speedup_ci_note": note}


def test_a_speed_up_interval_short_of_95_percent_is_marked_and_explained_under_the_table():
    note = "the range of 4 samples of one process, a 88% interval, not a 95% CI"
    lines = report.format_table([bench_row(note)]).splitlines()
    assert "1.20x [1.10, 1.30]*" in lines[1]
    assert lines[2:] == [f"* {note}"]


def test_a_95_percent_interval_has_no_mark_and_no_legend():
    lines = report.format_table([bench_row("")]).splitlines()
    assert "1.20x [1.10, 1.30] " in lines[1] and "*" not in lines[1] and len(lines) == 2

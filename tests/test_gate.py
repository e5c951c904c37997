"""The gate: baselines keyed by hardware, floors judged on intervals, hostile files refused in one
line, nothing passed unjudged. (A really slower step caught, on counts: test_count.py.)"""

import json
import math
import shutil

import pytest
from profiles import sides  # made-up workers' profiled steps

from cifar_spec.bench import baselines, gate, machine, records, report, stats
from cifar_spec.bench.profiled import Profile
from cifar_spec.bench.suite import worker_threads
from cifar_spec.cli import main

INFO = {"cpu_model": "AMD EPYC", "threads": 2, "torch": "2.14.1"}


def test_a_baseline_is_kept_per_hardware_and_survives_a_torch_upgrade():
    assert baselines.fingerprint(INFO) == "AMD_EPYC-2t"
    assert baselines.fingerprint({**INFO, "torch": "2.15.0", "node": "runner-7"}) == "AMD_EPYC-2t"
    assert baselines.fingerprint({**INFO, "threads": 4}) != baselines.fingerprint(INFO)
    assert (
        baselines.fingerprint({**INFO, "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 8})
        == "NVIDIA_H100_80GB_HBM3-x8-2t"
    )


def row(times):
    return {
        "device": "cpu",
        "variant": "eager",
        "batch": 1,
        "step_times": times,
        "seconds_per_step": stats.estimate(times).median,
    }


def test_a_saved_baseline_is_read_back_and_judged(tmp_path):
    times = [[0.010, 0.011, 0.0105, 0.0102] * 3]
    path = baselines.baseline_path(tmp_path, INFO)
    baselines.save_baseline(path, INFO, [row(times)])
    saved = baselines.load_baseline(path)
    assert saved["machine_info"]["torch"] == "2.14.1"
    [judged] = gate.time_judge(saved["rows"], [row(times)], 0.1)
    assert judged.verdict == records.NO_CHANGE and judged.ratio == 1.0


def test_saving_a_baseline_never_writes_through_a_planted_link(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    path = baselines.baseline_path(tmp_path / "store", INFO)
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    baselines.save_baseline(path, INFO, [row([[0.01] * 4])])
    assert target.read_text() == "keep me" and not path.is_symlink()


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"rows": NaN}', "NaN is not a number"),
        ("[1, 2]", "is not a cifar-spec baseline"),
        (
            '{"rows": [{"device": "cpu", "variant": "eager", "batch": 1, "step_times": [[0.0]]}]}',
            "row 0 is not a measured case",
        ),
        (
            '{"rows": [{"device": "cpu", "variant": "eager", "batch": "1", "step_times": [[1]]}]}',
            "row 0 is not a measured case",
        ),
    ],
    ids=["invalid", "nan", "list", "zero-time", "string-batch"],
)
def test_a_damaged_baseline_is_refused_naming_the_file_and_the_fix(tmp_path, text, message):
    path = tmp_path / "baseline.json"
    path.write_text(text)
    with pytest.raises(baselines.GateError, match=message) as error:
        baselines.load_baseline(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "floors, message",
    [
        ('{"eager": {"1": {"speedup": NaN}}}', "NaN is not a number"),
        ('{"eager": {"1": {"speedup": "fast"}}}', "'eager' batch '1' speedup: the floor must be"),
        ('{"eager": {"1": {"speedup": null}}}', "'eager' batch '1' speedup: the floor must be"),
        ('{"eager": {"1": [1.05]}}', "'eager' batch '1' must be an object of figures, got list"),
        ('{"eager": 1.05}', "'eager' must be an object of batch sizes, got float"),
        ('{"eager": {"one": {"speedup": 1}}}', "a batch size must be a whole number"),
        ('{"eager": {"1": {"roofline": 0.5}}}', "unknown figure 'roofline'"),
        ("[]", "the floors must be an object"),
        ("{oops", "is not valid JSON"),
    ],
    ids=["nan", "string", "null", "list", "number", "batch-name", "figure", "top-list", "invalid"],
)
def test_a_bad_floors_file_is_refused_naming_the_file_and_the_key(tmp_path, floors, message):
    path = tmp_path / "cpu.json"
    path.write_text(floors)
    with pytest.raises(baselines.GateError, match=message) as error:
        baselines.load_floors(path)
    assert str(path) in str(error.value)


def test_the_shipped_floors_are_valid_and_found_outside_a_checkout():
    for device in ("cpu", "cuda"):
        floors = baselines.load_floors(baselines.default_floors(device))
        assert any(not k.startswith("_") for k in floors)


def sped(variant, low, high):
    return {
        "device": "cpu",
        "variant": variant,
        "batch": 1,
        "speedup": (low + high) / 2,
        "speedup_ci": [low, high],
    }


def test_a_floor_fails_only_when_the_whole_interval_lies_below_it():
    floors = {
        "a": {"1": {"speedup": 1.1}},
        "b": {"1": {"speedup": 1.1}},
        "c": {"1": {"speedup": 1.1}},
    }
    failed, unsure = gate.check_floors(
        [sped("a", 0.9, 1.05), sped("b", 1.0, 1.2), sped("c", 1.15, 1.3)], floors
    )
    assert failed == ["cpu a batch 1: speed-up 0.98x [0.90, 1.05] against the floor 1.1"]
    assert unsure == ["cpu b batch 1: speed-up 1.10x [1.00, 1.20] against the floor 1.1"]


def test_floors_with_no_case_in_the_run_are_named():
    floors = {"_note": "text", "channels_last": {"64": {}, "256": {}}, "renamed": {"1": {}}}
    rows = [{"variant": "channels_last", "batch": 64}]
    assert gate.unmeasured_floors(rows, floors) == ["channels_last batch 256", "renamed batch 1"]


def judged(verdict):
    return records.Judged(records.Case("cpu", "eager", 1), records.TIME, verdict, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "verdicts, failed, unsure, code, line",
    [
        ([records.NO_CHANGE], [], [], 0, "gate: passed"),
        ([records.IMPROVEMENT], [], [], 0, "gate: passed"),
        ([records.REGRESSION, records.INCONCLUSIVE], [], [], 1, "gate: FAILED (1 regression(s))"),
        ([records.NO_CHANGE], ["x"], [], 1, "gate: FAILED (1 speed-up(s) below the floor)"),
        ([records.INCONCLUSIVE], [], [], 3, "gate: inconclusive (1 case(s) straddle the threshold"),
        ([records.NO_CHANGE], [], ["x"], 3, "gate: inconclusive (1 speed-up(s) straddle the floor"),
        ([], [], [], 3, "gate: inconclusive (no case of this run is in the baseline"),
    ],
    ids=["passed", "improved", "regressed", "floor", "straddles", "floor-straddles", "nothing"],
)
def test_every_outcome_ends_in_one_line_and_its_exit_code(verdicts, failed, unsure, code, line):
    got_code, got_line = gate.outcome([judged(v) for v in verdicts], failed, unsure)
    assert got_code == code and got_line.startswith(line)


def gate_info(threads: int | None = None) -> dict:
    """What a plain `cifar-spec gate` here describes its workers as (`--threads` if given)."""
    return machine.describe(worker_threads(threads))


def test_the_gate_without_a_baseline_says_how_to_make_one(tmp_path, capsys):
    assert main(["gate", "--storage", str(tmp_path)]) == 2
    assert "gate --save-baseline" in capsys.readouterr().err


def test_the_gate_on_a_damaged_baseline_ends_in_one_line_not_a_traceback(tmp_path, capsys):
    path = baselines.baseline_path(tmp_path, gate_info())
    path.parent.mkdir(parents=True)
    path.write_text('{"rows": [{"device": 1}]}')
    assert main(["gate", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 0 is not a measured case" in err


CUDA_ROW = {"device": "cuda", "variant": "eager", "batch": 1, "step_times": [[0.001]]}


@pytest.mark.parametrize(
    "metric, file, rows, said",
    [
        ("time", "baseline", [], "holds no cases at all, none on cpu"),
        ("time", "baseline", [CUDA_ROW], "holds cases on cuda only, none on cpu"),
        pytest.param(
            "instructions",
            "counts",
            [],
            "holds no cases at all, none on cpu",
            marks=pytest.mark.skipif(shutil.which("valgrind") is None, reason="no valgrind"),
        ),
    ],
)
def test_a_baseline_with_no_case_for_this_device_is_refused_before_any_work(
    tmp_path, capsys, no_workers, metric, file, rows, said
):
    info = gate_info()
    path = (baselines.baseline_path if file == "baseline" else baselines.count_baseline_path)(
        tmp_path, info
    )
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"machine_info": info, "rows": rows}))
    argv = ["gate", "--storage", str(tmp_path), "--device", "cpu", "--metric", metric]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "could judge nothing" in err


def test_a_nan_floor_in_a_floors_folder_stops_the_gate_before_any_measurement(tmp_path, capsys):
    (tmp_path / "cpu.json").write_text('{"eager": {"1": {"speedup": NaN}}}')
    assert (
        main(
            [
                "gate",
                "--save-baseline",
                "--storage",
                str(tmp_path / "store"),
                "--floors",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "NaN is not a number" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_the_default_threshold_is_a_fraction():
    assert 0 < gate.GATE_THRESHOLD < 0.5 and not math.isnan(gate.GATE_THRESHOLD)


def test_a_baseline_is_json_with_the_versions_it_was_measured_with(tmp_path):
    path = baselines.baseline_path(tmp_path, INFO)
    baselines.save_baseline(path, INFO, [row([[0.01] * 4])])
    assert json.loads(path.read_text())["machine_info"] == INFO


@pytest.mark.slow
def test_the_gate_end_to_end_saves_a_baseline_then_fails_a_speed_up_below_its_floor(
    tmp_path, capsys
):
    (tmp_path / "floors").mkdir()
    (tmp_path / "floors" / "cpu.json").write_text('{"channels_last": {"1": {"speedup": 5}}}')
    flags = [
        "--storage",
        str(tmp_path / "store"),
        "--floors",
        str(tmp_path / "floors"),
        "--device",
        "cpu",
        "--variant",
        "eager",
        "--variant",
        "channels_last",
        "--batch-size",
        "1",
        "--workers",
        "1",
        "--threads",
        "1",
    ]
    assert main(["gate", "--save-baseline", *flags]) == 0
    assert "gate: baseline saved to" in capsys.readouterr().out
    saved = baselines.load_baseline(next((tmp_path / "store").glob("*/baseline.json")))
    assert [len(r["profiles"]) for r in saved["rows"]] == [1, 1]  # one worker's profiled steps
    assert main(["gate", *flags, "--json", str(tmp_path / "run.json")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("baseline: torch ") and "cpu channels_last batch 1  " in "\n".join(out)
    assert any(line.startswith("below the floor: cpu channels_last batch 1") for line in out)
    assert out[-1].startswith("gate: FAILED (") and "1 speed-up(s) below the floor" in out[-1]
    assert len(json.loads((tmp_path / "run.json").read_text())["rows"]) == 2


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"rows": [{"device": "cpu", "variant": "eager", "batch": 1}]}',
        '{"rows": [{"device": "cpu", "variant": "eager", "batch": 1, '
        '"instructions_per_step": [0], "functions": {}}]}',
        '{"rows": [{"device": "cpu", "variant": "eager", "batch": 1, '
        '"instructions_per_step": [5], "functions": {"f": "x"}}]}',
    ],
    ids=["not-an-object", "no-counts", "zero-count", "bad-function"],
)
def test_a_damaged_baseline_of_counts_is_refused_naming_the_file_and_the_fix(tmp_path, text):
    path = tmp_path / "instructions.json"
    path.write_text(text)
    with pytest.raises(baselines.GateError, match="instructions.json.*--metric instructions"):
        baselines.load_baseline(path, "instructions")


def test_counts_are_kept_per_cpu_at_one_thread_even_on_a_machine_with_a_gpu():
    gpu = {**INFO, "gpu_name": "NVIDIA H200", "gpu_count": 1}
    assert baselines.count_baseline_path("s", gpu) == baselines.count_baseline_path("s", INFO)


def test_counts_are_kept_per_cpu_at_one_thread_beside_the_times():
    assert baselines.count_baseline_path("s", INFO).parts[-2:] == (
        "AMD_EPYC-1t",
        "instructions.json",
    )
    assert baselines.count_baseline_path(
        "s", {**INFO, "threads": 8}
    ) == baselines.count_baseline_path("s", INFO)


def test_a_baseline_saved_at_one_thread_never_judges_a_run_on_every_core(
    tmp_path, capsys, monkeypatch
):
    # The fingerprint is the workers' thread count, not the controller's: before, a
    # one-thread baseline sat in the all-core folder and judged all-core runs.
    from cifar_spec.bench import suite

    row = {"device": "cpu", "variant": "eager", "batch": 1, "seconds_per_step": 0.004}
    monkeypatch.setattr(
        suite,
        "measure_rows",
        lambda *args: [{**row, "step_times": [[0.004] * 8] * 3, "speedup_ci": None}],
    )
    storage = ["--storage", str(tmp_path), "--device", "cpu", "--json", str(tmp_path / "r.json")]
    assert main(["gate", "--threads", "1", "--save-baseline", *storage]) == 0
    saved = capsys.readouterr().out
    assert f"{baselines.fingerprint(gate_info(1))}/baseline.json" in saved
    assert main(["gate", *storage]) == 2  # every core: no baseline of its own yet
    err = capsys.readouterr().err
    assert "no baseline for this hardware" in err and f"-{worker_threads(None)}t" in err
    assert main(["gate", "--threads", "1", *storage]) == 0  # the one it was saved for
    if worker_threads(None) != 1:
        assert baselines.fingerprint(gate_info(1)) != baselines.fingerprint(gate_info())


def test_a_ratio_from_one_worker_of_four_rounds_a_side_is_marked_not_a_95_percent_ci():
    # gate --workers 1 against a baseline whose reference row holds 4 rounds
    few = [[0.010, 0.011, 0.0105, 0.0102]]
    [judged] = gate.time_judge([row(few)], [row(few)], 0.3)
    table = report.judged_table([judged], records.TIME, 0.3, ("baseline", "now"))
    assert "]*" in table[2] and "%" in table[2]  # marked, and its spread shown
    assert table[-1].startswith("* ") and "not a 95% CI" in table[-1]
    assert judged.as_dict()["estimates"]["ratio"]["confidence"] is None


def test_a_floor_straddled_by_a_short_interval_says_what_the_interval_is():
    short = {**sped("a", 1.0, 1.2), "speedup_ci_note": "the range of 2 samples of one process"}
    _, unsure = gate.check_floors([short], {"a": {"1": {"speedup": 1.1}}})
    assert "[1.00, 1.20] (the range of 2 samples of one process) against" in unsure[0]


def profiled_row(times, profiles):
    return {**row(times), "profiles": [p.as_dict() for p in profiles]}


def test_a_baseline_keeps_each_cases_profiled_rounds_and_reads_them_back(tmp_path):
    base, _ = sides(1.0, 1.0)
    rows = gate.with_profiles([row([[0.01] * 4])], {records.Case("cpu", "eager", 1): base})
    path = baselines.baseline_path(tmp_path, INFO)
    baselines.save_baseline(path, INFO, rows)
    [saved] = baselines.load_baseline(path)["rows"]
    assert [Profile.from_dict(p) for p in saved["profiles"]] == base


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: {**p, "step": [-0.001] * len(p["step"])},
        lambda p: {**p, "trace": "/tmp/elsewhere.json"},
        lambda p: {**p, "device": "cuda"},
        lambda p: {**p, "operators": {"aten::addmm": [0.001]}},
        lambda p: "a profile",
    ],
    ids=["negative-seconds", "a-trace", "another-device", "too-few-steps", "not-an-object"],
)
def test_a_baseline_with_damaged_profiled_rounds_is_refused_naming_the_file_and_the_fix(
    tmp_path, damage
):
    base, _ = sides(1.0, 1.0)
    bad = {**row([[0.01] * 4]), "profiles": [damage(base[0].as_dict())]}
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"rows": [bad]}))
    with pytest.raises(baselines.GateError, match="row 0 is not a measured case.*--save-baseline"):
        baselines.load_baseline(path)


def test_a_regression_in_the_gate_is_attributed_against_the_baselines_own_profiled_rounds(
    tmp_path,
):
    base, cand = sides(1.0, 3.0)
    asked = []

    def profile(planned):
        asked.extend(planned)
        return {case: cand for case in planned}

    metric = gate.Metric(records.TIME, INFO, tmp_path, ["cpu"], list, 0.3, profile=profile)
    slower = {**row([[0.02] * 8] * 3), "batch": 16}
    baseline = {
        "rows": [profiled_row([[0.01] * 8] * 3, base), {**row([[0.01] * 8] * 3), "batch": 16}]
    }
    lines = []
    now = [row([[0.02] * 8] * 3), slower]
    assert gate.judge_run(metric, baseline, now, 0.3, lines.append) == 1
    assert asked == [records.Case("cpu", "eager", 1)]  # the regression the baseline has rounds of
    at = next(i for i, line in enumerate(lines) if line.startswith("cpu eager batch 1 "))
    assert lines[at + 1].startswith("    profiled steps (24 + 24, cpu)")
    assert lines[at + 2].startswith("    aten::max_pool2d_with_indices under aten::max_pool2d  +")
    assert any(
        line.startswith("note: cpu eager batch 16 is not attributed: the baseline holds no")
        for line in lines
    )

"""Instruction counts: the CPU's deterministic metric. One environment counted twice is no
change; an extra convolution is a regression that names the convolution; a case that never
calls it is no change; what cannot be counted is refused in one line."""

import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cifar_spec.bench import baselines, callgrind, counts, gate, machine, records, report
from cifar_spec.bench.records import Case
from cifar_spec.cli import main
from cifar_spec.step import default_step

EAGER = Case("cpu", "eager", 1)
DEFAULT = Case("cpu", default_step("cpu").name, 1)  # its convolutions are aten's, not F.conv2d

needs_valgrind = pytest.mark.skipif(
    shutil.which("valgrind") is None, reason="valgrind is not installed (apt-get install valgrind)"
)

# callgrind_annotate --tree=caller, cut down: a named function, and JIT code twice under one
# caller (two kernels, two addresses), which must pool into one line named by that caller.
ANNOTATED = """\
--------------------------------------------------------------------------------
Ir         file:function
--------------------------------------------------------------------------------

3,512,201  < ???:at::native::max_pool2d_kernel_impl(at::Tensor const&) (9x) [/t/libtorch_cpu.so]
3,508,469  *  ???:void at::native::cpu_max_pool<float, false>(at::Tensor const&) [/t/libtorch_cpu.so]

3,224,640  < ???:dnnl::impl::cpu::x64::jit_avx2_convolution_fwd_t::execute_forward() const (192x) [/t/libtorch_cpu.so]
3,224,640  *  ???:0x00000000dc835000 [???]

      200  < ???:at::foo() [/t/libtorch_cpu.so]
    1,000  < ???:dnnl::impl::cpu::x64::jit_avx2_convolution_fwd_t::execute_forward() const (2x) [/t/libtorch_cpu.so]
    1,200  *  ???:0x00000000dd000000 [???]

      500  *  ./malloc/./malloc/malloc.c:_int_free [/usr/lib/x86_64-linux-gnu/libc.so.6]

       30  *  ???:0x000000000dcf2770 [/t/libtorch_cpu.so]

       10  *  ???:0x000000000dcebec0 [/t/libtorch_cpu.so]
"""  # noqa: E501

CONV_JIT = (
    "JIT code of oneDNN, called from "
    "dnnl::impl::cpu::x64::jit_avx2_convolution_fwd_t::execute_forward() const [libtorch_cpu.so]"
)


def test_code_without_a_symbol_is_pooled_by_caller_if_jit_and_by_library_if_stripped():
    functions = callgrind.parse_annotate(ANNOTATED, steps=2)
    assert functions == {
        "void at::native::cpu_max_pool<float, false>(at::Tensor const&) [libtorch_cpu.so]": (
            3_508_469 / 2
        ),
        CONV_JIT: (3_224_640 + 1_200) / 2,
        "_int_free [libc.so.6]": 250,
        "code without a symbol in libtorch_cpu.so": 20,
    }


def test_the_estimated_cycles_are_callgrinds_weights_of_the_cache_misses():
    values = {"Ir": 1000, "I1mr": 1, "D1mr": 2, "D1mw": 3, "ILmr": 1, "DLmr": 1, "DLmw": 0}
    assert callgrind.estimated_cycles(values, steps=2) == (1000 + 10 * 6 + 100 * 2) / 2
    assert callgrind.estimated_cycles({"Ir": 1000}, steps=1) is None


def counted(*values: float, functions: dict | None = None) -> list[callgrind.Count]:
    return [callgrind.Count(v, None, functions or {}) for v in values]


@pytest.mark.parametrize(
    "base, cand, verdict",
    [
        ((100e6, 100e6), (100e6, 100e6), records.NO_CHANGE),
        ((100e6, 100.001e6), (100.5e6, 100.5e6), records.NO_CHANGE),
        ((100e6, 100e6), (102e6, 102e6), records.REGRESSION),
        ((100e6, 100e6), (97e6, 97e6), records.IMPROVEMENT),
        ((100e6, 100e6), (100.9e6, 101.1e6), records.INCONCLUSIVE),
    ],
)
def test_a_count_verdict_takes_the_range_over_every_process_of_both_sides(base, cand, verdict):
    assert counts.judge(EAGER, counted(*base), counted(*cand), 0.01).verdict == verdict


def test_processes_of_one_side_that_disagree_are_named_and_never_vouch_for_no_change():
    # 0.2% apart: within the 1% threshold, but twice the tenth of it that processes may differ by.
    judged = counts.judge(EAGER, counted(100e6, 100.2e6), counted(100.1e6, 100.1e6), 0.01)
    assert judged.verdict == records.INCONCLUSIVE
    assert "the baseline's processes disagree by 0.200%" in judged.note


# Two fresh counting processes of one environment, eager batch 1 (Zen 4, torch 2.14.1, 2026-12-04,
# docs/instruction-counts.md): instructions per step in all, and in the allocators.
SAME_CODE = ((31_082_105.875, 1_529_736.5), (31_064_694.125, 1_512_675.7))


def test_the_allocators_own_functions_are_told_apart_by_name_in_libc_and_python():
    functions = {
        "_int_malloc [libc.so.6]": 10.0,
        "unlink_chunk.constprop.0 [libc.so.6]": 1.0,
        "malloc": 2.0,
        "_int_free'2 [libc.so.6]": 3.0,
        "_PyObject_Free [libpython3.11.so.1.0]": 4.0,
        "allocate_from_new_pool [libpython3.11.so.1.0]": 5.0,
        "c10::alloc_cpu(unsigned long) [libc10.so]": 100.0,  # torch's: the step's own code
        "PyObject_Vectorcall [libpython3.11.so.1.0]": 100.0,
        "at::native::free_buffers() [libtorch_cpu.so]": 100.0,
    }
    assert callgrind.allocator_instructions(functions) == 25.0


def test_one_environment_counted_in_two_processes_is_no_change_to_the_hundredth_of_a_percent():
    """The allocators' share moves with a process's history (0.056% of the step here); set
    apart, the rest agree to 0.0012%, and a 0.01% threshold holds."""
    (total_a, alloc_a), (total_b, alloc_b) = SAME_CODE
    base = [callgrind.Count(total_a, None, {}, {}, alloc_a)] * 2
    cand = [callgrind.Count(total_b, None, {}, {}, alloc_b)] * 2
    judged = counts.judge(EAGER, base, cand, 0.0001)
    assert judged.verdict == records.NO_CHANGE and judged.ratio == pytest.approx(1, abs=2e-5)
    assert judged.figures["allocator_per_step"]["candidate"] == [alloc_b] * 2


def test_a_baseline_saved_before_the_allocators_were_set_apart_is_judged_on_all_instructions():
    """Otherwise a saved total against a new figure without the allocators reads as a 5% gain."""
    (total, alloc), _ = SAME_CODE
    old = counts.from_row({"instructions_per_step": [total, total], "functions": {}})
    judged = counts.judge(EAGER, old, [callgrind.Count(total, None, {}, {}, alloc)] * 2, 0.01)
    assert judged.verdict == records.NO_CHANGE and judged.ratio == 1


def test_a_saved_row_keeps_each_processs_allocator_figure_and_a_bad_one_is_refused():
    (total, alloc), _ = SAME_CODE
    row = {"instructions_per_step": [total], "functions": {"f": 1.0}, "allocator_per_step": [alloc]}
    assert baselines.counts_fit(row) and counts.from_row(row)[0].allocator == alloc
    for bad in ([alloc, alloc], [total * 2], ["x"], [-1.0]):
        assert not baselines.counts_fit({**row, "allocator_per_step": bad})


def test_a_moved_case_lists_the_functions_that_moved_most_first():
    base = counted(100e6, 100e6, functions={"conv": 40e6, "pool": 10e6, "relu": 1e6})
    cand = counted(103e6, 103e6, functions={"conv": 43.5e6, "pool": 9.5e6, "relu": 1e6})
    judged = counts.judge(EAGER, base, cand, 0.01, top=2)
    assert judged.verdict == records.REGRESSION
    assert [(f["function"], f["delta"]) for f in judged.figures["top_functions"]] == [
        ("conv", 3.5e6),
        ("pool", -0.5e6),
    ]
    assert judged.moved and "conv" in "\n".join(report.count_lines(judged))
    unmoved = counts.judge(EAGER, base, base, 0.01)
    assert unmoved.verdict == records.NO_CHANGE and not unmoved.moved
    assert len(report.count_lines(unmoved)) == 1  # the row alone; its functions are in --json


def test_counting_without_valgrind_is_refused_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        callgrind.CountError, match=r"valgrind.*not on PATH.*apt-get install valgrind"
    ):
        callgrind.check_tools()
    code = main(["compare", sys.executable, sys.executable, "--metric", "instructions"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "apt-get install valgrind" in err


@pytest.mark.parametrize("command", ["compare", "gate", "bench"])
def test_counting_on_cuda_is_refused_in_one_line_saying_why(command, capsys):
    pythons = [sys.executable, sys.executable] if command == "compare" else []
    code = main([command, *pythons, "--metric", "instructions", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "valgrind cannot run CUDA code" in err


def test_counting_with_one_process_per_environment_is_refused(capsys):
    code = main(
        ["compare", sys.executable, sys.executable, "--metric", "instructions", "--workers", "1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "2 or more processes per environment" in err


def test_counting_a_compiled_step_is_refused_before_any_work(capsys):
    code = main(["bench", "--metric", "instructions", "--variant", "compile"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "torch.compile is not counted" in err


def test_an_output_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    code = main(
        ["compare", sys.executable, sys.executable, "--markdown", str(tmp_path / "file/d/x.md")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "file is not a folder" in err
    assert (tmp_path / "file").read_text() == "mine"


def process(label: str, value: float, functions: dict) -> callgrind.Process:
    info = {"python": sys.executable, "torch": "2.x", "cpu_model": "cpu", "threads": 1}
    return callgrind.Process(
        label,
        info,
        {EAGER: callgrind.Count(value, None, functions)},
        {DEFAULT: "not here"},
    )


def test_compare_on_counts_prints_the_verdict_the_functions_and_writes_json_and_markdown(
    monkeypatch, tmp_path, capsys
):
    def fake_count_all(pythons, processes, cases, cache_sim=False, expected=None, progress=None):
        assert processes == 2 and cases == [EAGER, DEFAULT]
        return {
            "baseline": [process(f"b{i}", 100e6, {"conv": 40e6}) for i in range(2)],
            "candidate": [process(f"c{i}", 103e6, {"conv": 43e6}) for i in range(2)],
        }

    monkeypatch.setattr(callgrind, "count_all", fake_count_all)
    monkeypatch.setattr(callgrind, "check_tools", lambda: None)
    out, md = tmp_path / "v.json", tmp_path / "v.md"
    code = main(
        ["compare", sys.executable, sys.executable, "--metric", "instructions"]
        + ["--variant", EAGER.variant, "--variant", DEFAULT.variant, "--batch-size", "1"]
        + ["--json", str(out), "--markdown", str(md)]
    )
    printed = capsys.readouterr().out
    assert code == 1 and printed.rstrip().endswith("compare: REGRESSION")
    assert "1.0300 [1.0300, 1.0300]" in printed and "+3,000,000" in printed
    assert f"{DEFAULT.variant} batch 1" in printed and "skipped: not here" in printed
    data = json.loads(out.read_text())
    [judged] = [r for r in data["counts"] if r["verdict"] != "skipped"]
    assert judged["top_functions"][0] == {
        "function": "conv",
        "baseline": 40e6,
        "candidate": 43e6,
        "delta": 3e6,
    }
    assert data["verdicts"][0] == {
        "device": "cpu",
        "variant": "eager",
        "batch": 1,
        "verdict": "regression",
        "decided_by": "instructions",
    }
    text = md.read_text()
    assert "| cpu eager batch 1 |" in text and "**regression** | instructions |" in text
    assert "| +3,000,000 | 40,000,000 | 43,000,000 | `conv` |" in text


def test_pythons_given_by_relative_paths_reach_the_counting_workers_as_absolute_ones(
    monkeypatch, tmp_path, capsys
):
    # valgrind, started in a counting worker's own folder, looked a relative path up there
    # and exited 127: the paths are resolved once, in the folder the user gave them in.
    seen = {}

    def fake_count_all(pythons, processes, cases, cache_sim=False, expected=None, progress=None):
        seen.update(pythons)
        return {side: [process(side, 100e6, {"conv": 40e6})] * 2 for side in pythons}

    monkeypatch.setattr(callgrind, "count_all", fake_count_all)
    monkeypatch.setattr(callgrind, "check_tools", lambda: None)
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(sys.executable)
    flags = ["--metric", "instructions", "--variant", "eager", "--batch-size", "1"]
    assert main(["compare", relative, relative, *flags]) == 0, capsys.readouterr().err
    assert seen == dict.fromkeys(("baseline", "candidate"), os.path.abspath(sys.executable))


def test_a_compare_that_judged_no_case_is_inconclusive_not_passed(monkeypatch, capsys):
    monkeypatch.setattr(callgrind, "check_tools", lambda: None)
    monkeypatch.setattr(
        callgrind,
        "count_all",
        lambda pythons, processes, cases, cache_sim=False, expected=None, progress=None: {
            side: [
                callgrind.Process(
                    "p",
                    {"python": "p", "torch": "t", "cpu_model": "c", "threads": 1},
                    {},
                    {c: "cannot" for c in cases},
                )
            ]
            * 2
            for side in pythons
        },
    )
    code = main(["compare", sys.executable, sys.executable, "--metric", "instructions"])
    printed = capsys.readouterr().out
    assert code == 3 and printed.rstrip().endswith("no case was judged: every one was skipped)")


def ctrl_c_once_written(path: Path) -> None:
    """SIGUSR1 to the main thread (a KeyboardInterrupt there) once `path` exists: sent to
    the process, the signal could go to another thread and leave the main one waiting."""
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)


@needs_valgrind
def test_ctrl_c_while_counting_workers_start_stops_them_at_once_and_leaves_no_folder(
    scripted_python, tmp_path, monkeypatch
):
    # A worker that never says hello, as one importing torch under valgrind for minutes.
    # Ctrl-C once stopped only the workers that had said it: this one ran on, and its
    # thread waited for it.
    pid = tmp_path / "pid"
    python = scripted_python(f"echo $$ > {pid}; exec sleep 600")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    previous = signal.signal(signal.SIGUSR1, signal.default_int_handler)
    try:
        threading.Thread(target=ctrl_c_once_written, args=(pid,), daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            callgrind.count_all({"side": str(python)}, 1, [EAGER])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    deadline = time.monotonic() + 10
    while list(temporary.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the worker's thread removes its folder as it ends
    assert list(temporary.iterdir()) == []
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid.read_text()), 0)


@needs_valgrind
@pytest.mark.slow
def test_one_environment_counts_the_same_twice_and_an_extra_convolution_is_a_regression_named(
    slow_python, slow_site, tmp_path, monkeypatch, capsys
):
    """Counted for real: two processes of this Python, and one of it with every F.conv2d run
    twice (sitecustomize.py), on eager and on the CPU's default step (whose convolutions are
    aten's own, so the slowdown never reaches it). The two processes of this Python are the
    same environment counted twice. Three processes, the fewest that show every claim: each
    starts in 70-85 s of CPU on a 2-core Zen 1 (importing the CUDA wheel under valgrind), the
    most expensive start in the spec, so all three run at once. The first one's counts are
    then the baseline of a real `gate` started under a PYTHONPATH (below): one count fewer
    than a test of its own, which had to count a baseline first. The counts leave nothing in
    the temporary folder, though each worker is killed (valgrind's pipes once stayed)."""
    cases = [EAGER, DEFAULT]
    python = str(slow_python(2))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    with ThreadPoolExecutor(max_workers=2) as pool:
        base = pool.submit(callgrind.count_all, {"baseline": sys.executable}, 2, cases)
        slow = pool.submit(callgrind.count_all, {"slow": python}, 1, cases)
        counted = {**base.result(), **slow.result()}
    assert sorted(path.name for path in temporary.iterdir()) == []
    first, second = counted["baseline"]

    def judged(case, base, cand):
        return counts.judge(
            case, [p.counts[case] for p in base], [p.counts[case] for p in cand], 0.01
        )

    for case in (EAGER, DEFAULT):
        same = judged(case, [first], [second])
        assert same.verdict == records.NO_CHANGE, same
        # Processes of one environment agree within the tenth of the threshold the report
        # allows (measured: 0.000-0.026%), and the row says nothing of a disagreement.
        assert abs(same.ratio - 1) <= counts.AGREEMENT * 0.01 and same.note == ""
    slower = judged(EAGER, counted["baseline"], counted["slow"])
    assert slower.verdict == records.REGRESSION and slower.low > 1.05, slower
    assert any("convolution" in moved.operator for moved in slower.top[:3]), slower.top
    assert judged(DEFAULT, counted["baseline"], counted["slow"]).verdict == records.NO_CHANGE

    # The gate on the same counts: a baseline saved from the first process, then judged
    # against the second (this Python again) and against the slow one.
    path = tmp_path / "instructions.json"
    baselines.save_baseline(path, {"torch": "this"}, counts.as_rows([first], [EAGER, DEFAULT]))
    baseline = baselines.load_baseline(path, "instructions")
    said: list[str] = []
    again = counts.as_rows([second], [EAGER, DEFAULT])
    slow = counts.as_rows(counted["slow"], [EAGER, DEFAULT])
    metric = gate.count_metric(str(tmp_path), lambda: [])
    assert gate.judge_run(metric, baseline, again, 0.01, said.append) == 0
    assert said[-1] == "gate: passed"
    assert gate.judge_run(metric, baseline, slow, 0.01, said.append) == 1
    assert said[-1] == "gate: FAILED (1 regression(s))"
    assert any("convolution" in line for line in said)

    gate_under_a_pythonpath_judges_the_code_on_it(first, slow_site, tmp_path, monkeypatch, capsys)


def gate_under_a_pythonpath_judges_the_code_on_it(plain, slow_site, tmp_path, monkeypatch, capsys):
    """`gate --metric instructions` against a baseline of `plain` counts of this Python,
    started with a PYTHONPATH whose sitecustomize.py runs every F.conv2d 3 times. Its workers run
    the user's environment, so the gate counts the changed step: a regression, exit 1 (workers
    that dropped PYTHONPATH counted the plain step and passed it)."""
    storage = tmp_path / "store"
    info = machine.describe(1)
    path = baselines.count_baseline_path(storage, info)
    baselines.save_baseline(path, info, counts.as_rows([plain], [EAGER]))
    site = slow_site(3)  # the counting above made slow_site(2)
    monkeypatch.setenv("PYTHONPATH", str(site))
    out = tmp_path / "run.json"
    flags = ["--storage", str(storage), "--variant", "eager", "--batch-size", "1"]
    code = main(["gate", "--metric", "instructions", *flags, "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 1 and printed.rstrip().endswith("gate: FAILED (1 regression(s))"), printed
    assert any("convolution" in line for line in printed.splitlines())
    recorded = json.loads(out.read_text())["machine_info"]
    assert recorded["pythonpath"] == str(site) and recorded["torch_file"] == info["torch_file"]

"""Worker processes: they build and time cases, and a crashed or hung one is reported and ended."""

import os
import re
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

import cifar_spec
from cifar_spec.bench import cases, spawn
from cifar_spec.bench._handle import Worker
from cifar_spec.bench.paired import Unsupported, build_arm, measure_pairs
from cifar_spec.bench.records import Case
from cifar_spec.bench.worker import Held, handle
from cifar_spec.cli import main
from cifar_spec.errors import BadRound, WorkerError
from cifar_spec.step import StepOptions


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def worker():
    with Worker(sys.executable, "test", threads=1) as w:
        yield w


def weights(case: cases.StepBench) -> list[torch.Tensor]:
    return [p.detach().clone() for p in case.model.parameters()]


def test_every_round_of_a_step_case_starts_from_the_weights_it_was_built_with():
    # In this process: the round request as a worker answers it, without starting one.
    case = cases.build(StepOptions(), "cpu", 1)
    built = weights(case)
    ends = []
    for _ in range(3):
        handle({"op": "round", "key": "k", "steps": 4}, Held({"k": case}))
        ends.append(weights(case))
    assert not any(torch.equal(a, b) for a, b in zip(built, ends[0]))  # a round trains
    assert all(torch.equal(a, b) for end in ends[1:] for a, b in zip(ends[0], end))


def test_a_step_case_round_that_ends_in_a_non_finite_loss_is_an_error_naming_the_case():
    case = cases.build(StepOptions(), "cpu", 1)
    case.snapshot.optimizer.param_groups[0]["lr"] = 1e30  # the weights overflow in a step
    case.snapshot.take()
    with pytest.raises(BadRound, match="case cpu-eager-1: a round from its saved weights .*nan"):
        handle({"op": "round", "key": case.key, "steps": 2}, Held({case.key: case}))


def test_a_worker_says_which_torch_and_cifar_spec_it_runs(worker):
    import torch

    assert worker.info["torch"] == torch.__version__ and worker.info["threads"] == 1
    assert worker.info["torch_git"] == torch.version.git_version
    assert worker.info["torch_file"] == torch.__file__
    assert worker.info["cifar_spec"] == str(Path(cifar_spec.__file__).parent)


def test_a_worker_builds_a_case_and_times_paired_rounds(worker):
    eager = build_arm(worker, Case("cpu", "eager", 2))
    also = build_arm(worker, Case("cpu", "channels_last", 2))
    samples = measure_pairs([(eager, also)], min_pairs=4)
    assert samples.pairs == 4 and all(a > 0 and b > 0 for a, b in samples.groups[0])
    assert samples.gpu_arm(0) is None  # no CUDA events on a CPU


def test_a_case_the_device_cannot_run_is_unsupported_with_its_reason(worker):
    with pytest.raises(Unsupported, match="CUDA graphs need a CUDA device"):
        build_arm(worker, Case("cpu", "channels_last+one_call_sgd+cuda_graph", 1))


def test_an_unknown_variant_is_refused_naming_it(worker):
    with pytest.raises(WorkerError, match="no variant 'warp-speed'"):
        build_arm(worker, Case("cpu", "warp-speed", 1))


def test_a_worker_that_dies_at_start_is_reported_with_its_exit_code(scripted_python):
    python = scripted_python("echo 'no such module' >&2; exit 3")
    with pytest.raises(WorkerError, match=r"exited .*exit code 3: no such module"):
        Worker(str(python), "dead")


def test_a_worker_that_hangs_is_stopped_within_the_timeout_and_leaves_nothing_running(
    scripted_python, hello
):
    # Answers hello, then swallows every request: a deadlocked step.
    python = scripted_python(f"{hello}; while read line; do :; done; sleep 600")
    w = Worker(str(python), "hung")
    start = time.perf_counter()
    with pytest.raises(WorkerError, match="did not answer 'round' within 1 s and was stopped"):
        w.call({"op": "round", "key": "k", "steps": 1}, timeout=1)
    assert time.perf_counter() - start < 5
    assert w.process.poll() is not None and not alive(w.process.pid)


def test_dropping_a_case_from_a_stopped_worker_leaves_the_error_that_stopped_it_alone(
    scripted_python, hello
):
    # compare and bench drop their cases in a `finally`: a second error there (the worker
    # "was stopped after an earlier failure") would be said in place of the first.
    python = scripted_python(f"{hello}; while read line; do :; done; sleep 600")
    w = Worker(str(python), "hung")
    with pytest.raises(WorkerError, match="did not answer 'round'"):
        try:
            w.call({"op": "round", "key": "k", "steps": 1}, timeout=1)
        finally:
            w.drop("k")
    assert w.stopped


def test_a_worker_that_crashes_mid_round_is_reported(scripted_python, hello):
    python = scripted_python(f"{hello}; read line; exit 9")
    w = Worker(str(python), "crash")
    with pytest.raises(WorkerError, match="exited during 'round' with exit code 9"):
        w.call({"op": "round", "key": "k", "steps": 1}, timeout=30)


def test_a_stopped_worker_refuses_further_requests_in_one_clear_error(scripted_python, hello):
    python = scripted_python(f"{hello}; read line; exit 0")
    w = Worker(str(python), "stopped")
    w.stop()
    with pytest.raises(WorkerError, match="was stopped after an earlier failure"):
        w.call({"op": "hello"}, timeout=5)


@pytest.mark.slow
def test_after_a_worker_dies_the_suite_fails_that_case_and_measures_the_next_afresh():
    import signal

    from cifar_spec.bench.suite import Suite

    with Suite(workers=1, min_pairs=2, threads=1) as suite:
        suite.measure(Case("cpu", "eager", 2))
        os.killpg(suite._workers[0].process.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match="exited"):
            suite.measure(Case("cpu", "channels_last", 2))
        row = suite.measure(Case("cpu", "channels_last", 2))
        assert row["speedup"] > 0 and row["processes"] == 1


@pytest.mark.parametrize(
    "answer, said",
    [
        ("echo 'Loading weights...'", "a line that is not JSON"),
        ("echo '{\"host\": 0.1}'", "fields ['host'], not"),
        ('echo \'{"host": 0.1, "gpu": null, "note": 1}\'', "fields ['gpu', 'host', 'note']"),
        ('echo \'{"host": "fast", "gpu": null}\'', "a wrong value for host"),
        ('echo \'{"host": NaN, "gpu": null}\'', "a wrong value for host"),
        ("echo '[1, 2]'", "a list, not an object"),
    ],
)
def test_a_reply_of_the_wrong_shape_stops_the_worker_in_one_line(
    scripted_python, hello, answer, said
):
    python = scripted_python(f"{hello}; read line; {answer}; sleep 600")
    w = Worker(str(python), "odd")
    with pytest.raises(WorkerError, match=re.escape(said)) as error:
        w.call({"op": "round", "key": "k", "steps": 1}, timeout=30)
    assert "\n" not in str(error.value) and "it was stopped" in str(error.value)
    assert not alive(w.process.pid)


def test_a_stray_line_is_caught_before_it_shifts_every_later_reply(scripted_python, hello):
    # Answers the first round twice: the second line would be read as the next reply.
    round_reply = '{"host": 0.1, "gpu": null}'
    python = scripted_python(
        f"{hello}; read line; echo '{round_reply}'; echo '{round_reply}'; sleep 600"
    )
    w = Worker(str(python), "stray")
    assert w.call({"op": "round", "key": "k", "steps": 1}, timeout=30)["host"] == 0.1
    deadline = time.monotonic() + 10
    while not w.pending() and time.monotonic() < deadline:  # the stray line arrives
        time.sleep(0.05)
    with pytest.raises(WorkerError, match="sent a line before 'round' was asked"):
        w.call({"op": "round", "key": "k", "steps": 1}, timeout=30)
    assert not alive(w.process.pid)


def test_a_worker_that_closes_its_output_and_keeps_running_is_stopped_in_one_line(
    scripted_python, hello
):
    python = scripted_python(f"{hello}; read line; exec 1>&-; sleep 600")
    w = Worker(str(python), "mute")
    start = time.perf_counter()
    with pytest.raises(WorkerError, match="closed its output during 'round' but kept running"):
        w.call({"op": "round", "key": "k", "steps": 1}, timeout=30)
    assert time.perf_counter() - start < 10
    assert not alive(w.process.pid)


def plant(folder: Path, names: tuple[str, ...], mark: Path) -> None:
    """Modules in `folder` that each leave their name in `mark` if they ever run."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_text(f"open({str(mark)!r}, 'a').write('{name} ')\n")


def test_a_torch_in_the_current_folder_never_runs_in_a_worker_whatever_pythonpath_says(
    tmp_path, monkeypatch
):
    # What a user might leave where they run cifar-spec, each leaving a mark if run; and a
    # PYTHONPATH that names that folder in each way it can: an empty entry, ".", its path,
    # a link to it. The folder stays off the path; the PYTHONPATH's other entry is kept.
    here, link, mark = tmp_path / "here", tmp_path / "link", tmp_path / "ran"
    plant(here, ("torch.py", "runpy.py", "sitecustomize.py", "json.py"), mark)
    link.symlink_to(here)
    monkeypatch.chdir(here)
    kept = str(tmp_path / "kept")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["", ".", str(here), str(link), kept]))
    monkeypatch.setenv("PYTHONSTARTUP", str(here / "torch.py"))  # read by no `python -c`
    with Worker(sys.executable, "clean", threads=1, cwd=str(here)) as w:
        import torch

        assert w.info["torch_file"] == torch.__file__ and w.info["pythonpath"] == kept
    assert not mark.exists(), mark.read_text()


def test_a_sitecustomize_on_pythonpath_runs_in_every_worker_as_in_the_command(
    tmp_path, monkeypatch
):
    # The user's environment is theirs: a patched package or a sitecustomize.py on their
    # PYTHONPATH runs in every Python they start, and so in the workers that judge it.
    site, mark = tmp_path / "site", tmp_path / "ran"
    plant(site, ("sitecustomize.py",), mark)
    monkeypatch.setenv("PYTHONPATH", str(site))
    with Worker(sys.executable, "theirs", threads=1) as w:
        assert w.info["pythonpath"] == str(site)
    assert mark.read_text() == "sitecustomize.py "


def test_a_relative_pythonpath_entry_reaches_a_worker_that_runs_in_another_folder(
    tmp_path, monkeypatch
):
    # A counting worker runs in a folder of its own: "src" there would be another folder.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["src", "/opt/patched", "."]))
    monkeypatch.setenv("PYTHONINSPECT", "1")  # a prompt after the code: a process that hangs
    env = spawn.clean_environment()
    assert env["PYTHONPATH"] == os.pathsep.join([str(tmp_path / "src"), "/opt/patched"])
    assert "PYTHONINSPECT" not in env


def test_a_worker_whose_torch_is_not_this_commands_is_refused_in_one_line_before_any_work(
    scripted_python, hello_of, tmp_path, monkeypatch, capsys
):
    import torch

    from cifar_spec.bench import suite

    # Says it imported another torch; marks any request of work it gets, and answers it.
    asked = tmp_path / "asked"
    python = scripted_python(
        f"{hello_of(torch_file='/elsewhere/torch/__init__.py')}; read line; "
        f"touch '{asked}'; echo '{{\"unsupported\": \"asked\"}}'; sleep 600"
    )
    monkeypatch.setattr(suite, "Suite", partial(suite.Suite, python=str(python)))
    code = main(["bench", "--device", "cpu", "--variant", "eager", "--batch-size", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "imported torch" in err and "/elsewhere/torch/__init__.py" in err
    assert f"where this command imported torch {torch.__version__}" in err
    assert torch.__file__ in err and not asked.exists()

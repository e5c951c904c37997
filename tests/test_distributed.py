"""Data parallelism: several processes train as one does on their global batch, and stop together.

Each multi-process test starts its ranks as torchrun would (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT on a port free at the time, gloo on 127.0.0.1), one
thread each, so that `pytest -n auto` neither clashes nor oversubscribes the
cores; every rank is killed, if still alive, before its test ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import distributed_ranks as ranks  # what each rank runs: the same batches and settings here
import pytest
import torch
from precision import FLOAT32_LONG_RUN, FLOAT64  # how runs compare

import cifar_spec
from cifar_spec.checkpoint import load_checkpoint
from cifar_spec.cli import main
from cifar_spec.data import DeviceData
from cifar_spec.distributed.agreement import difference
from cifar_spec.distributed.launch import ERROR_FILE, World, join, tell_torchrun, world_from_env
from cifar_spec.distributed.sharding import Shard, split
from cifar_spec.errors import DistributedError
from cifar_spec.loop import TrainConfig, fit, shared_settings
from cifar_spec.model import CifarNet
from cifar_spec.step import (
    StepOptions,
    default_step,
    make_step,
    prepare_model,
    unsupported,
)

HERE = Path(__file__).parent

LAUNCH_SECONDS = 120  # a run that takes longer than this hung: its ranks are killed


def free_port() -> int:
    """A port no one listens on now: each test its own, so parallel tests never meet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def checkout_environment() -> dict:
    """This environment, with this checkout's cifar_spec first on the path and one thread per
    process: two ranks fill a 2-core runner, no more."""
    root = str(Path(cifar_spec.__file__).parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)


def rank_environment(rank: int, size: int, port: int) -> dict:
    """What torchrun would set for rank `rank` of `size`."""
    return dict(
        checkout_environment(),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def launch(scenario: str, out: Path, data: Path, size: int = 2) -> list[int]:
    """Run `scenario` of distributed_ranks.py on `size` ranks; their exit codes."""
    command = [sys.executable, str(HERE / "distributed_ranks.py"), scenario, str(out), str(data)]
    # A stalled rank never exits by itself: rank 0, which gives up on it, is waited for.
    waited = 1 if scenario == "stalled" else size
    return run_ranks([command] * size, out, free_port(), waited=waited)


def run_ranks(
    commands: list[list[str]],
    out: Path,
    port: int,
    size: int | None = None,
    waited: int | None = None,
    first: int = 0,
) -> list[int]:
    """Start rank first + i of `size` (default: one per command) as `commands[i]`, in `out`; wait
    for the first `waited` (default: all) to exit; their exit codes, stderr in
    out/stderr-RANK.txt.

    Each rank leads a process group of its own, killed whatever happens, so no
    rank outlives the test (asserted).
    """
    size = len(commands) if size is None else size
    processes = []
    deadline = time.monotonic() + LAUNCH_SECONDS
    try:
        for rank, command in enumerate(commands, start=first):
            with open(out / f"stderr-{rank}.txt", "wb") as stderr:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=out,  # not a checkout: `python -m` puts the folder it runs in first
                        env=rank_environment(rank, size, port),
                        stdout=subprocess.DEVNULL,
                        stderr=stderr,
                        start_new_session=True,
                    )
                )
        for process in processes[:waited]:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not any(alive(p.pid) for p in processes)
    return [p.returncode for p in processes]


def launched_once(run_folder: Path, scenario: str, data: Path) -> Path:
    """The folder of one successful run of `scenario`, shared by every test that reads it.

    Under xdist each worker has its own module fixtures; `run_folder` is common to
    them (and to this run only), so the first worker runs the scenario (the others
    wait on the lock) and all read its results.
    """
    shared = run_folder / scenario
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "done").exists():
            codes = launch(scenario, shared, data)
            assert codes == [0, 0], stderr_of(shared, 0) + stderr_of(shared, 1)
            (shared / "done").touch()
    return shared


def stderr_of(out: Path, rank: int) -> str:
    return (out / f"stderr-{rank}.txt").read_text()


@pytest.fixture(scope="module")
def step_results(run_folder, synthetic_root):
    out = launched_once(run_folder, "steps", synthetic_root)
    return {
        (name, rank): torch.load(out / f"steps-{name}-{rank}.pt", weights_only=True)
        for name in ranks.STEP_OPTIONS
        for rank in (0, 1)
    }


def one_process_step(options: StepOptions, images, labels) -> dict:
    torch.manual_seed(0)
    model = prepare_model(CifarNet(), options).double()  # as the ranks do
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    make_step(model, optimizer, options)(images, labels)
    return {
        "params": [p.detach() for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
    }


def test_after_one_step_two_ranks_on_a_and_b_have_the_gradients_of_one_process_on_a_plus_b(
    step_results,
):
    images, labels = ranks.global_batch()
    alone = one_process_step(StepOptions(), images, labels)
    # Each rank averages 4 images, DDP adds the halves; one process averages 8: the same
    # sum in another order, float64 rounding apart (tests/precision.py).
    for rank in (0, 1):
        torch.testing.assert_close(step_results["eager", rank]["grads"], alone["grads"], **FLOAT64)


def test_the_manual_backward_under_ddp_takes_the_step_of_one_process_on_a_plus_b(step_results):
    images, labels = ranks.global_batch()
    options = ranks.STEP_OPTIONS["default"]
    alone = one_process_step(options, images, labels)
    # Its gradients never reach .grad: the parameters after the update show them.
    assert options.manual_backward
    for rank in (0, 1):
        torch.testing.assert_close(
            step_results["default", rank]["params"], alone["params"], **FLOAT64
        )


@pytest.mark.parametrize("name", list(ranks.STEP_OPTIONS))
def test_after_five_steps_the_parameters_are_identical_on_both_ranks(step_results, name):
    first, second = step_results[name, 0]["later"], step_results[name, 1]["later"]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, step_results[name, 0]["params"]))


@pytest.fixture(scope="module")
def fit_results(run_folder, synthetic_root):
    out = launched_once(run_folder, "fits", synthetic_root)
    sums = [json.loads((out / f"fits-{rank}.json").read_text()) for rank in (0, 1)]
    return out, sums


@pytest.mark.parametrize("name", list(ranks.STEP_OPTIONS))
def test_two_ranks_fit_with_the_loss_sums_of_one_process_at_the_same_global_batch(
    fit_results, test_split, name
):
    _, sums = fit_results
    alone = fit(TrainConfig(step=ranks.STEP_OPTIONS[name], **ranks.FIT), test_split, log=None)
    assert sums[0][name] == sums[1][name]  # every rank reports the global sums
    # The same images in every step (the last one split 2 + 1, weighted so); only the order
    # of float32 additions differs, and with it the odd pooling tie; a shard lost or counted
    # twice moves the sums ten times more than the tolerance (tests/precision.py).
    torch.testing.assert_close(sums[0][name], alone, **FLOAT32_LONG_RUN)


def test_a_distributed_run_resumed_ends_where_an_uninterrupted_one_does(fit_results):
    out, sums = fit_results
    assert sums[0]["resumed"] == sums[0]["whole"]
    whole = torch.load(out / "whole" / "checkpoint.pt", weights_only=True)["model"]
    resumed = torch.load(out / "resumed" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_only_rank_0_writes_the_run_folder_and_it_records_the_global_sums(fit_results):
    out, sums = fit_results
    history = json.loads((out / "whole" / "history.json").read_text())
    assert [e["loss_sum"] for e in history["epochs"]] == sums[0]["whole"]
    assert (out / "whole" / ".cifar-spec.lock").read_text().strip() == str(sums[0]["pid"])
    assert not list((out / "whole").glob(".*.tmp"))  # no half-written file from another rank


@pytest.mark.parametrize("how", ["killed", "stalled"])
def test_a_rank_that_dies_mid_run_stops_the_others_with_a_clear_error_in_bounded_time(
    tmp_path, synthetic_root, how
):
    codes = launch(how, tmp_path, synthetic_root)
    assert codes[0] == 2, stderr_of(tmp_path, 0)
    seen = json.loads((tmp_path / "seen.json").read_text())
    gone = json.loads((tmp_path / "gone.json").read_text())
    assert "died or stopped answering in epoch 2" in seen["error"]
    assert "checkpoint.pt holds epoch 1" in seen["error"]
    # A dead rank's connections close at once; a stopped one is given up on after the
    # process group's timeout. Either way the survivor stops, it does not hang (10 s
    # allow for a loaded 2-core runner).
    waited = seen["at"] - gone["at"]
    if how == "killed":
        assert waited < 10
    else:
        assert ranks.TIMEOUT - 1 < waited < ranks.TIMEOUT + 10
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt", CifarNet())
    assert state["epoch"] == 1


def train_command(data: Path, out: Path, *flags: str) -> list[str]:
    """`python -m cifar_spec train` on 64 images in steps of 4, into `out`, with `flags`."""
    command = [sys.executable, "-m", "cifar_spec", "train", "--data-root", str(data)]
    command += ["--epochs", "1", "--limit", "64", "--batch-size", "4", "--no-progress"]
    return [*command, "--out", str(out), *flags]


def the_error(out: Path, rank: int) -> str:
    """The one line a rank wrote: asserted to be all of its stderr, and no traceback."""
    lines = stderr_of(out, rank).splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-spec: error: "), lines
    return lines[0]


@pytest.mark.slow
def test_ranks_launched_with_different_settings_all_stop_before_a_step_in_one_line_naming_them(
    tmp_path, synthetic_root
):
    # Two settings differ, a training one (lr) and the data's (limit): one launch shows that
    # each is compared and named (a launch is two starts of torch, 12 s of CPU on a Zen 1).
    run = tmp_path / "run"
    ranks_0_and_1 = [
        train_command(synthetic_root, run, "--dist-timeout", "20"),
        train_command(synthetic_root, run, "--dist-timeout", "20", "--lr", "0.02", "--limit", "32"),
    ]
    start = time.monotonic()
    codes = run_ranks(ranks_0_and_1, tmp_path, free_port())
    took = time.monotonic() - start
    assert codes == [2, 2], stderr_of(tmp_path, 0) + stderr_of(tmp_path, 1)
    for rank in (0, 1):
        error = the_error(tmp_path, rank)
        assert "the ranks were launched with different settings: " in error
        assert "lr is 0.01 on rank 0 but 0.02 on rank 1" in error
        assert "limit is 64 on rank 0 but 32 on rank 1" in error
        assert error.endswith("launch every rank with the same arguments")
    # Starting two Pythons with torch is most of it (about 10 s on a 2-core runner).
    assert took < 60  # bounded: not --dist-timeout's default 300 s, nor for ever
    assert not any(run.iterdir())  # checked by rank 0 before the data, then left untouched


@pytest.mark.slow
def test_a_master_port_held_by_a_program_that_is_no_store_stops_both_ranks_in_one_line(
    tmp_path, synthetic_root
):
    with socket.socket() as squatter:
        # Listening, it accepts connections (the kernel does) but never answers one.
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        command = train_command(synthetic_root, tmp_path / "run", "--dist-timeout", "1")
        start = time.monotonic()
        codes = run_ranks([command, command], tmp_path, port)
        took = time.monotonic() - start
    assert codes == [2, 2]
    assert f"MASTER_PORT {port} is taken on this machine by another program" in the_error(
        tmp_path, 0
    )
    # Rank 1 reached the port, and waits on torch's join no longer than 2 x 1 s + 5 s.
    assert f"nothing at 127.0.0.1:{port} answered as the run's store" in the_error(tmp_path, 1)
    assert took < 60  # bounded: not --dist-timeout's default 300 s, nor for ever
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_rank_whose_peers_never_come_stops_after_the_timeout_in_one_line(
    tmp_path, synthetic_root
):
    command = train_command(synthetic_root, tmp_path / "run", "--dist-timeout", "1")
    start = time.monotonic()
    assert run_ranks([command], tmp_path, free_port(), size=2) == [2]
    took = time.monotonic() - start
    assert "only 1 of 2 processes came to 127.0.0.1:" in the_error(tmp_path, 0)
    assert took < 60  # bounded: not --dist-timeout's default 300 s, nor for ever
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_rank_whose_rank_0_never_comes_stops_after_the_timeout_in_one_line(
    tmp_path, synthetic_root
):
    port = free_port()
    # The same start, refused before joining: what starting Python and torch costs here.
    refused = train_command(synthetic_root, tmp_path / "run", "--batch-size", "3")
    start = time.monotonic()
    assert run_ranks([refused], tmp_path, port, size=2, first=1) == [2]
    starting = time.monotonic() - start
    command = train_command(synthetic_root, tmp_path / "run", "--dist-timeout", "10")
    start = time.monotonic()
    assert run_ranks([command], tmp_path, port, size=2, first=1) == [2]
    took = time.monotonic() - start
    assert the_error(tmp_path, 1).startswith(  # one line: no C++ frames of torch's retries
        f"cifar-spec: error: rank 1: rank 0 never came: nothing answered at 127.0.0.1:{port} "
        "within --dist-timeout 10 s; start every rank with torchrun"
    )
    # torch alone waited twice the timeout (20 s, then the line, after 40 lines of frames).
    assert took > 10 and took - starting < 15
    assert not (tmp_path / "run").exists()


def test_a_rank_waits_for_rank_0s_store_no_longer_than_the_timeout_and_torch_says_nothing(
    monkeypatch, capfd
):
    port = free_port()
    for name, value in rank_environment(1, 2, port).items():
        monkeypatch.setenv(name, value)  # torch joins by the environment (env://)
    world = World(rank=1, size=2, local_rank=1, backend="gloo", timeout=3.0, port=port)
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"^rank 0 never came: nothing answered at "):
        join(world)
    took = time.monotonic() - start
    assert 3 <= took < 4.5  # torch's own connection is tried twice: 6 s
    assert capfd.readouterr().err == ""  # torch's retries log C++ frames on the descriptor


def a_refused_rank(tmp_path: Path, monkeypatch, local_rank: str, env: dict, flags: list) -> int:
    """`train FLAGS` as local rank `local_rank` of two that torchrun started, in `env`."""
    for name, value in dict(TORCHRUN_ENV, RANK=local_rank, LOCAL_RANK=local_rank, **env).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(ERROR_FILE, str(tmp_path / "error.json"))
    argv = ["train", "--data-root", str(tmp_path / "data"), *flags]
    return main([*argv, "--dist-timeout", "0.5"])  # rank 1 waits this for torchrun to stop it


BATCH_REFUSED = "--batch-size 3 (images per step over all processes) does not divide among 2"


@pytest.mark.parametrize("local_rank", ["0", "1"])
@pytest.mark.parametrize(
    ("env", "flags", "refused"),
    [
        ({}, ["--batch-size", "3"], BATCH_REFUSED),
        ({"MASTER_ADDR": "no-such-host.invalid"}, [], "MASTER_ADDR=no-such-host.invalid names no"),
    ],
    ids=["batch", "address"],
)
def test_under_torchrun_a_refusal_before_joining_is_said_once_a_machine_and_in_its_report(
    tmp_path, monkeypatch, capsys, local_rank, env, flags, refused
):
    assert a_refused_rank(tmp_path, monkeypatch, local_rank, env, flags) == 2
    reason = json.loads((tmp_path / "error.json").read_text())["message"]["message"]
    assert reason.startswith(f"cifar-spec: error: {refused}")
    said = capsys.readouterr().err.splitlines()
    assert said == ([reason] if local_rank == "0" else [])


def test_torchruns_report_of_a_refused_rank_shows_its_line_where_a_traceback_would_be(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import (
        ChildFailedError,
        ProcessFailure,
    )

    line = f"cifar-spec: error: {BATCH_REFUSED} processes; pass a multiple of 2"
    tell_torchrun({ERROR_FILE: str(tmp_path / "error.json")}, line)
    failure = ProcessFailure(0, 1234, 2, str(tmp_path / "error.json"))  # as torchrun reads it
    report = ChildFailedError("cifar_spec", {0: failure}).format_msg()
    assert f"  traceback : {line}\n" in report


def test_every_process_of_a_machine_with_too_few_gpus_refuses_alike(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # torchrun --nproc-per-node 4 on 2 GPUs: local rank 0 would have one, but not rank 3.
    here = dict(TORCHRUN_ENV, LOCAL_RANK="0", LOCAL_WORLD_SIZE="4", WORLD_SIZE="4")
    with pytest.raises(DistributedError, match="4 processes on this machine .* has 2 CUDA"):
        world_from_env(here, "cuda", backend="gloo")
    assert world_from_env(dict(here, LOCAL_WORLD_SIZE="2"), "cuda", backend="gloo").size == 4


def test_a_setting_that_differs_is_named_with_its_value_on_each_rank():
    assert difference("lr", [0.01, 0.02, 0.01, 0.03, 0.02]) == (
        "lr is 0.01 on rank 0 but 0.02 on ranks 1 and 4, 0.03 on rank 3"
    )
    assert (
        difference("seed", [0] + [1] * 6) == "seed is 0 on rank 0 but 1 on ranks 1, 2, 3 and 3 more"
    )
    assert difference("limit", [None, 32]) == "limit is unset on rank 0 but 32 on rank 1"


def test_ranks_compare_the_type_of_their_device_not_the_gpu_each_one_takes(test_split):
    first, second = (World(rank, 2, rank, "nccl") for rank in (0, 1))
    config = TrainConfig(limit=8)
    on = lambda world: shared_settings(  # noqa: E731
        replace(config, device=world.device("cuda")), test_split.head(8), False, world
    )
    assert on(first) == on(second) and on(first)["device"] == "cuda"
    assert on(first)["lr"] == 0.01 and on(first)["images"].startswith("8 (labels ")


def test_the_shards_of_every_batch_cover_it_once_however_it_splits():
    for count in range(1, 12):
        parts = [split(count, rank, 3) for rank in range(3)]
        covered = [i for part in parts for i in range(part.start, part.stop)]
        assert covered == list(range(count))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_over_an_epoch_the_ranks_share_one_processs_batches_and_cover_the_split_once():
    indices = torch.arange(20.0)  # image i is filled with i, to see which images a rank took
    data = DeviceData(indices.view(20, 1, 1, 1).expand(20, 3, 32, 32), torch.zeros(20).long())
    taken = {}
    for rank in range(3):
        shard = Shard(World(rank, 3, rank, "gloo"))
        # Drawn all before any step: each part carries its own weight, whenever it is taken.
        parts = list(shard.batches(data, 6, torch.Generator().manual_seed(0)))
        # 3 batches of 6 (2 images each), then 2 (1, 1, and a stand-in weighted 0).
        taken[rank] = [(images[:, 0, 0, 0].tolist(), weight) for images, _, weight in parts]
    shares = [[1 / 3] * 3] * 3 + [[1 / 2, 1 / 2, 0]]  # each rank's part of each batch's images
    assert [[taken[rank][step][1] for rank in range(3)] for step in range(4)] == shares
    alone = data.batches(6, torch.Generator().manual_seed(0))
    for step, (images, _) in enumerate(alone):
        parts = [taken[rank][step] for rank in range(3)]
        assert [i for part, weight in parts if weight for i in part] == images[:, 0, 0, 0].tolist()
        assert sum(weight for _, weight in parts) == pytest.approx(1)
    seen = sorted(i for rank in taken for part, weight in taken[rank] if weight for i in part)
    assert seen == indices.tolist()


TORCHRUN_ENV = dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")


@pytest.mark.parametrize(
    "env, flags, message",
    [
        (
            dict(WORLD_SIZE="2"),
            [],
            "RANK, MASTER_ADDR, MASTER_PORT not set, but RANK or WORLD_SIZE is",
        ),
        (dict(TORCHRUN_ENV, RANK="2"), [], "RANK=2 is outside a world of WORLD_SIZE=2"),
        (dict(TORCHRUN_ENV, WORLD_SIZE="two"), [], "WORLD_SIZE='two' is not a whole number"),
        (dict(TORCHRUN_ENV, MASTER_PORT="99999"), [], "MASTER_PORT=99999 is not a port"),
        (
            dict(TORCHRUN_ENV, MASTER_ADDR="no-such-host.invalid"),
            [],
            "MASTER_ADDR=no-such-host.invalid names no machine that this one can find",
        ),
        (TORCHRUN_ENV, ["--batch-size", "3"], "--batch-size 3 .* does not divide among 2"),
        (
            TORCHRUN_ENV,
            ["--backend", "nccl", "--device", "cpu"],
            "--backend nccl exchanges CUDA tensors only.*use --backend gloo",
        ),
    ],
    ids=[
        "world-without-master",
        "rank-outside-world",
        "size-not-a-number",
        "port-out-of-range",
        "address-unknown",
        "batch",
        "backend",
    ],
)
def test_a_bad_distributed_launch_is_refused_in_one_line_before_any_work(
    tmp_path, monkeypatch, capsys, env, flags, message
):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["train", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run")]
    assert main(argv + flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_a_single_process_needs_no_distributed_environment():
    assert world_from_env({}, "cpu") is None
    world = world_from_env(TORCHRUN_ENV, "cpu")
    assert (world.rank, world.size, world.local_rank, world.backend) == (0, 2, 0, "gloo")


def test_ddp_refuses_the_cuda_graph_and_says_why():
    options = StepOptions(channels_last=True, one_call_sgd=True, cuda_graph=True)
    assert "all-reduce between processes" in unsupported(options, "cuda", data_parallel=True)


def test_under_ddp_the_default_steps_leave_out_the_cuda_graph_and_keep_the_rest():
    on_gpus = StepOptions(channels_last=True, one_call_sgd=True)
    assert default_step("cuda", data_parallel=True) == on_gpus
    cpu = default_step("cpu", data_parallel=True)
    assert cpu == default_step("cpu") and cpu.manual_backward
    for options in (cpu, StepOptions(channels_last=True, bf16=True), StepOptions()):
        assert unsupported(options, "cpu", data_parallel=True) is None


def test_a_world_takes_the_gpu_of_its_local_rank():
    world = World(rank=5, size=8, local_rank=1, backend="nccl")
    assert world.device("cuda") == "cuda:1" and world.device("cpu") == "cpu"


def test_one_gpu_cannot_serve_several_processes():
    with pytest.raises(DistributedError, match="puts every process on one GPU"):
        world_from_env(dict(TORCHRUN_ENV, LOCAL_RANK="0"), "cuda:0", backend="gloo")


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m cifar_spec ARGS`, on a port it picks itself."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "cifar_spec", *args]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=dict(checkout_environment(), TMPDIR=str(cwd)),  # torchrun's logs, kept in the test's
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=LAUNCH_SECONDS)
    finally:
        if process.poll() is None:
            # torchrun starts each rank in a session of its own: asked to stop (SIGTERM),
            # it stops them; killed outright, it would leave them behind.
            process.terminate()
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    assert not running_with(str(cwd)), "a rank outlived torchrun"
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def running_with(text: str) -> list[int]:
    """The processes whose command line holds `text` (a test's own folder): what it left."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_text():
                found.append(int(entry.name))
        except OSError:  # ended meanwhile, or not ours to read
            pass
    return found


def test_torchrun_trains_with_the_loss_sums_of_one_process_and_rank_0_alone_reports(
    tmp_path, synthetic_root
):
    flags = ["train", "--data-root", str(synthetic_root), "--epochs", "2", "--limit", "64"]
    flags += ["--batch-size", "4", "--no-progress"]
    run = torchrun([*flags, "--out", str(tmp_path / "two")], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("epoch   1/2") == 1 and "2 processes (gloo)" in run.stdout
    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    two, one = (
        [e["loss_sum"] for e in json.loads((tmp_path / n / "history.json").read_text())["epochs"]]
        for n in ("two", "one")
    )
    # 32 steps; only the order of float32 additions differs (see the fit test above).
    torch.testing.assert_close(two, one, **FLOAT32_LONG_RUN)


def test_under_torchrun_a_run_folder_in_use_is_refused_once_by_rank_0(tmp_path, synthetic_root):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"an earlier run")
    flags = ["train", "--data-root", str(synthetic_root), "--epochs", "1", "--limit", "8"]
    run = torchrun([*flags, "--batch-size", "2", "--out", str(tmp_path / "run")], tmp_path)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("cifar-spec: error:")]
    assert len(errors) == 1 and "holds an earlier run" in errors[0], run.stderr
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == b"an earlier run"


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, said",
    [
        (["--batch-size", "3"], BATCH_REFUSED),
        (["--batch-size", "4", "--backend", "nccl"], "--backend nccl exchanges CUDA tensors only"),
    ],
    ids=["batch", "backend"],
)
def test_under_torchrun_a_bad_launch_is_one_line_then_torchruns_report_of_it(
    tmp_path, synthetic_root, flags, said
):
    argv = ["train", "--data-root", str(synthetic_root), "--device", "cpu", "--limit", "8"]
    run = torchrun([*argv, *flags, "--out", str(tmp_path / "run")], tmp_path)
    assert run.returncode == 1  # torchrun's own, for any failed process; the rank's is below
    lines = run.stderr.splitlines()
    ours = [i for i, line in enumerate(lines) if line.startswith("cifar-spec: error: ")]
    assert len(ours) == 1 and lines[ours[0]].startswith(f"cifar-spec: error: {said}"), lines
    assert ours[0] < lines.index("Traceback (most recent call last):")  # first, then torchrun's
    root = lines[lines.index("Root Cause (first observed failure):") :]
    assert "  rank      : 0 (local_rank: 0)" in root and "  exitcode  : 2 " in "\n".join(root)
    assert f"  traceback : {lines[ours[0]]}" in root
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(
    not (HERE.parent / "docs").is_dir(), reason="the docs live in a checkout, not in the package"
)
def test_the_docs_start_torchrun_from_the_venv_as_they_start_cifar_spec():
    import test_docs  # how the docs' spec reads their commands

    started = [
        (test_docs.name(page), words[0])
        for page in test_docs.PAGES
        for _, command in test_docs.shell_commands(page)
        for words in test_docs.simple_commands(command)
        if words[0].rsplit("/", 1)[-1] == "torchrun"
    ]
    assert started  # the docs do show torchrun
    # `make test` puts torchrun in .venv/bin, not on the PATH.
    assert all(word == ".venv/bin/torchrun" for _, word in started), started


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_torchrun_on_one_gpu_trains_with_nccl_and_the_loss_sums_of_one_process(
    tmp_path, synthetic_root
):
    flags = ["train", "--data-root", str(synthetic_root), "--device", "cuda", "--epochs", "2"]
    flags += ["--limit", "64", "--batch-size", "4", "--no-progress"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "1", "-m", "cifar_spec", *flags, "--out", str(tmp_path / "g")]
    run = subprocess.run(
        command, env=checkout_environment(), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "1 processes (nccl)" in run.stdout and "step: channels_last+one_call_sgd" in run.stdout
    assert main([*flags, "--eager", "--out", str(tmp_path / "one")]) == 0
    two, one = (
        [e["loss_sum"] for e in json.loads((tmp_path / n / "history.json").read_text())["epochs"]]
        for n in ("g", "one")
    )
    # The same batches through autograd's kernels, in NHWC under DDP, NCHW with --eager;
    # cuDNN runs both in TF32 by default (a 10-bit mantissa), so the tolerance is that of
    # TF32 in tests/test_cuda_graph.py, not float32's.
    torch.testing.assert_close(two, one, rtol=5e-3, atol=0)

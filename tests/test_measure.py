"""Timing in one process: rounds, warm-up, the order of paired rounds."""

import gc
import time

import pytest
import torch

from cifar_spec.bench import measure

CPU = torch.device("cpu")


def test_a_round_reports_seconds_per_step():
    r = measure.time_round(lambda: time.sleep(0.002), CPU, 5)
    assert 0.002 <= r.host < 0.01 and r.gpu is None


def test_the_garbage_collector_is_off_while_a_round_runs_and_back_after():
    seen = []
    measure.time_round(lambda: seen.append(gc.isenabled()), CPU, 3)
    assert seen == [False] * 3 and gc.isenabled()


def test_warm_up_runs_the_first_steps_untimed_and_settles_on_the_steady_time():
    calls = []

    def step():  # the first two calls are slow, as a compile or a cold cache would be
        calls.append(1)
        time.sleep(0.05 if len(calls) <= 2 else 0.001)

    assert measure.warm_up(step, CPU, seconds=0.05) < 0.005


def test_a_round_lasts_long_enough_to_hide_the_clock():
    assert measure.steps_per_round(0.001) * 0.001 >= measure.ROUND_SECONDS
    assert measure.steps_per_round(1.0) == 1


def test_paired_rounds_alternate_a_b_b_a():
    order = [i for pair in range(4) for i in measure.paired_order(pair)]
    assert order == [0, 1, 1, 0, 0, 1, 1, 0]


def test_a_step_for_pytest_benchmark_synchronizes_after_every_nth_call(monkeypatch):
    synced = []
    monkeypatch.setattr(measure, "synchronize", lambda device: synced.append(device))
    step = measure.synchronized_every(lambda: None, CPU, 3)
    for _ in range(7):
        step()
    assert len(synced) == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_round_on_a_gpu_is_timed_by_the_host_clock_and_by_cuda_events():
    a = torch.randn(2048, 2048, device="cuda")
    r = measure.time_round(lambda: a @ a, torch.device("cuda"), 10)
    assert r.gpu is not None and 0 < r.gpu <= r.host * 1.05


def test_untimed_steps_run_before_the_clock_starts():
    calls = []

    def step():  # the first call after a switch of process pays for cold caches
        calls.append(1)
        time.sleep(0.05 if len(calls) == 1 else 0.001)

    r = measure.time_round(step, CPU, 4, untimed=1)
    assert len(calls) == 5 and r.host < 0.01

"""Timing a training step in one process: warm-up, rounds, and the clock.

A *round* is a run of consecutive steps timed as one, long enough that reading
the clock and synchronizing the device cost under 1% of it. Everything that
compares two things (a variant against eager, one environment against another)
alternates their rounds A B B A A B ..., so that the machine's drift lands on
both arms alike (`paired_order`), and takes one ratio per quad A B B A
(`paired.quad_ratios`).

`torch.utils.benchmark.Timer` is not used for the rounds: its `timeit` runs a
warm-up of its own before every call (two or more extra steps per round, each
up to seconds long for an emulated bfloat16 step) and has no CUDA events.
Its idea is kept: the device is synchronized before the clock is read, the
garbage collector is off while timing, and the thread count is set explicitly
(by the worker process, once, see `worker.py`).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

ROUND_SECONDS = 0.05  # >= 1000x a clock read plus a CUDA synchronize (~50 us); long enough
# to average out a 2-core VM's timer ticks and steal over several steps
WARMUP_SECONDS = 0.3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def gc_off() -> Iterator[None]:
    """A collection in the middle of a round would be charged to whichever arm it hit."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class Round:
    """Seconds per step of one round: by the host's clock, and by CUDA events on a GPU.

    The events span the GPU's timeline from the round's first kernel to its
    last, idle gaps included, so on a launch-bound step they agree with the
    host clock too (within 0.3% on an H200); their agreement shows that the
    synchronization the host clock needs costs nothing measurable. What shows
    a launch-bound step is the CUDA graph's speed-up over the same step.
    """

    host: float
    gpu: float | None = None


def time_round(
    step: Callable[[], object], device: torch.device, steps: int, untimed: int = 0
) -> Round:
    """Run `steps` steps back to back and time them, the device synchronized at both ends.

    `untimed` steps run first, outside the clock: between paired rounds another
    process has run and evicted this one's weights from the caches, and a round
    that began cold would be charged for it. (Without them, same-environment
    compares on a 2-core EPYC put the candidate 3-7% ahead: at the start of each
    block of pairs, its rounds more often followed its own.)
    """
    events = None
    if device.type == "cuda":
        events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with gc_off():
        for _ in range(untimed):
            step()
        synchronize(device)
        start = time.perf_counter()
        if events:
            events[0].record()
        for _ in range(steps):
            step()
        if events:
            events[1].record()
        synchronize(device)
        host = time.perf_counter() - start
    gpu = events[0].elapsed_time(events[1]) / 1e3 / steps if events else None
    return Round(host / steps, gpu)


def warm_up(
    step: Callable[[], object], device: torch.device, seconds: float = WARMUP_SECONDS
) -> float:
    """Step until the time per step settles; return that time.

    The first steps pay for compilation, cuDNN's choice of algorithms, the
    allocator's growth and cold caches. Warm-up ends when two successive
    measurements agree within 10% and `seconds` have passed, or after 20
    measurements; the last one sizes the rounds.
    """
    time_round(step, device, 2)
    deadline = time.perf_counter() + seconds
    previous = time_round(step, device, 1).host
    for _ in range(20):
        steps = max(1, math.ceil(0.02 / previous))
        current = time_round(step, device, steps).host
        settled = abs(current - previous) <= 0.1 * previous
        previous = current
        if settled and time.perf_counter() >= deadline:
            break
    return previous


def steps_per_round(seconds_per_step: float, round_seconds: float = ROUND_SECONDS) -> int:
    return max(1, math.ceil(round_seconds / seconds_per_step))


def paired_order(pair: int) -> tuple[int, int]:
    """Which arm runs first in pair `pair`: A B, then B A, then A B ... (0 is A, 1 is B)."""
    return (0, 1) if pair % 2 == 0 else (1, 0)


def synchronized_every(
    step: Callable[[], object], device: torch.device, n: int
) -> Callable[[], object]:
    """`step`, with the device synchronized after every n-th call.

    For pytest-benchmark's `pedantic(..., iterations=n)`, which times n calls
    as one round and stores the time of one: the round then ends when the
    device has finished its work, not when the host has queued it.
    """
    calls = 0

    def call() -> object:
        nonlocal calls
        calls += 1
        result = step()
        if calls % n == 0:
            synchronize(device)
        return result

    return call

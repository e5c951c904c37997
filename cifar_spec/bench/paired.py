"""Paired, interleaved measurement of two arms across several worker processes.

An *arm* is one case built in one worker (a variant of the step, or a whole
training loop). Two arms are compared by alternating their rounds, A B B A
A B ..., so that whatever the machine does meanwhile lands on both; each quad
of rounds (A B B A, or B A A B) gives one ratio B / A of seconds per step, in
which the cost of running right after the other arm cancels (`quad_ratios`). Pairs are drawn from
several pairs of workers in turn (a block from each, round robin), because one
process's state can move all its timings at once; the statistics
(`stats.py`) treat each worker pair as a cluster.

Used alike by the pytest benchmarks, `cifar-spec bench`, `gate` and `compare`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cifar_spec.bench import stats
from cifar_spec.bench._handle import BUILD_TIMEOUT, Worker
from cifar_spec.bench.measure import ROUND_SECONDS, paired_order, steps_per_round
from cifar_spec.bench.profiled import PROFILED_STEPS, Profile
from cifar_spec.bench.records import Case
from cifar_spec.errors import WorkerError

T = TypeVar("T")

# A round this many times its planned length, and over ROUND_TIMEOUT_MIN, means a hung
# worker. Generous: two busy threads on a loaded 2-core machine were seen to take 100x
# their time (a 4 ms step took 300 ms), and a loop's round is a whole epoch.
ROUND_TIMEOUT_FACTOR = 200


ROUND_TIMEOUT_MIN = 120.0


BLOCK = 4  # pairs taken from one worker pair before moving to the next


# A profiled step's length over a timed one's, for a hung worker's timeout: the profiler
# adds its own cost to every operator it records.
PROFILER_COST = 10


@dataclass(frozen=True)
class Arm:
    """A case built and warmed up in one worker, with the steps one round takes."""

    worker: Worker
    case: Case
    steps: int
    seconds_per_step: float

    def round(self) -> tuple[float, float | None]:
        timeout = max(ROUND_TIMEOUT_MIN, ROUND_TIMEOUT_FACTOR * self.steps * self.seconds_per_step)
        reply = self.worker.call(
            {"op": "round", "key": self.case.key, "steps": self.steps}, timeout
        )
        return reply["host"], reply["gpu"]

    def profile(self, steps: int = PROFILED_STEPS, trace: str | None = None) -> Profile:
        """`steps` steps of this arm under torch.profiler (`profiled.py`), asked for after its
        timed rounds and never between them; with `trace`, its chrome trace written there."""
        planned = PROFILER_COST * steps * self.seconds_per_step
        timeout = max(ROUND_TIMEOUT_MIN, ROUND_TIMEOUT_FACTOR * planned)
        request = {"op": "profile", "key": self.case.key, "steps": steps}
        reply = self.worker.call(request | ({"trace": trace} if trace else {}), timeout)
        try:
            return Profile.from_dict(reply["profile"])
        except ValueError as error:  # a reply is not trusted: one line, as any other refusal
            raise WorkerError(f"{self.worker.name} answered 'profile' with {error}") from None


class Unsupported(Exception):
    """The case cannot run in this worker's environment; the message says why."""


def build_arm(worker: Worker, case: Case, round_seconds: float = ROUND_SECONDS) -> Arm:
    reply = worker.call(case.request(), BUILD_TIMEOUT)
    if "unsupported" in reply:
        raise Unsupported(reply["unsupported"])
    per_step = reply["seconds_per_step"]
    return Arm(worker, case, steps_per_round(per_step, round_seconds), per_step)


@dataclass
class Samples:
    """Seconds per step of arms A and B, one list of (a, b) pairs per worker pair."""

    groups: list[list[tuple[float, float]]] = field(default_factory=list)
    gpu_groups: list[list[tuple[float, float]]] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return sum(len(g) for g in self.groups)

    def ratio(self) -> stats.Estimate:
        """B's time over A's (above 1, B is slower), one ratio per A B + B A quad."""
        return stats.estimate([quad_ratios(g) for g in self.groups])

    def arm(self, index: int) -> stats.Estimate:
        """One arm's seconds per step."""
        return stats.estimate([[p[index] for p in g] for g in self.groups])

    def gpu_arm(self, index: int) -> stats.Estimate | None:
        """One arm's seconds per step by CUDA events; None off a GPU."""
        if not any(self.gpu_groups) or any(p[index] is None for g in self.gpu_groups for p in g):
            return None
        return stats.estimate([[p[index] for p in g] for g in self.gpu_groups])


def quad_ratios(pairs: list[tuple[float, float]]) -> list[float]:
    """B / A per quad of pairs (A B, then B A): the geometric mean of its two pairs' ratios.

    A round that follows the other arm's round ran up to 13% slower than one that
    follows its own (batch 1, two threads, this project's 2-core VM), so a single
    pair's ratio leans toward whichever arm ran first, and the ratios fall into two
    modes between which a median jumps. In a quad each arm runs first once: the lean
    cancels. A lone last pair is left out.
    """
    return [math.sqrt(b1 / a1 * (b2 / a2)) for (a1, b1), (a2, b2) in zip(pairs[::2], pairs[1::2])]


def alternate(
    rounds: tuple[Callable[[], T], Callable[[], T]],
    pairs: int,
    first: int = 0,
    tick: Callable[[], None] | None = None,
) -> list[tuple[T, T]]:
    """`pairs` pairs of rounds of two arms (A's and B's), numbered from `first`: A B, B A, ...

    The one paired-rounds loop: the workers' arms (`run_block`) and bench-ddp's ranks
    both alternate through it. A block begins after another worker's round, which
    slows the round that opens it: blocks open with A and with B in turn (A B B A A B
    B A, then B A A B B A A B), so that over two blocks each arm follows the same
    rounds as often as the other. `tick`, if given, is called after each pair.
    """
    lead = (first // pairs) % 2
    out = []
    for pair in range(first, first + pairs):
        timed: dict[int, T] = {}
        for index in paired_order(pair + lead):
            timed[index] = rounds[index]()
        out.append((timed[0], timed[1]))
        if tick:
            tick()
    return out


def run_block(
    a: Arm,
    b: Arm,
    pairs: int,
    first: int,
    samples: Samples,
    group: int,
    tick: Callable[[], None] | None = None,
) -> None:
    for (a_host, a_gpu), (b_host, b_gpu) in alternate((a.round, b.round), pairs, first, tick):
        samples.groups[group].append((a_host, b_host))
        samples.gpu_groups[group].append((a_gpu, b_gpu))


def pairs_to_take(samples: Samples | None, worker_pairs: int, min_pairs: int) -> int:
    """The pairs `measure_pairs` will take (for a progress bar's total): a block from every
    worker pair in each pass, until the one with fewest has `min_pairs`."""
    held = [len(g) for g in samples.groups] if samples else []
    fewest = min(held + [0] * (worker_pairs - len(held)))
    return worker_pairs * BLOCK * math.ceil(max(0, min_pairs - fewest) / BLOCK)


def measure_pairs(
    arms: list[tuple[Arm, Arm]],
    min_pairs: int,
    samples: Samples | None = None,
    tick: Callable[[], None] | None = None,
) -> Samples:
    """Blocks of pairs from each worker pair in turn until each has `min_pairs`. Given
    `samples`, adds to them (a worker pair new since gets a group of its own)."""
    samples = samples or Samples()
    while len(samples.groups) < len(arms):
        samples.groups.append([])
        samples.gpu_groups.append([])
    while min(len(g) for g in samples.groups) < min_pairs:
        for group, (a, b) in enumerate(arms):
            run_block(a, b, BLOCK, len(samples.groups[group]), samples, group, tick)
    return samples

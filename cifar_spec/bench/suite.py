"""The benchmark suite: each case measured against its reference across workers, as rows of figures.

A variant of the step is paired with eager (the tutorial's step) at the same
device and batch size, in the same worker processes; the fit loop with the
tutorial's loop. Each row holds the case's seconds per step (median and 95%
interval), images/s, spread, the speed-up over its reference with its 95%
interval, and the roofline fraction against the best peak the workers
measured. `cifar-spec bench`, `cifar-spec gate` and the pytest benchmarks all
measure through `Suite`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cifar_spec.bench import cases, counts, figures, machine, records, report
from cifar_spec.bench._handle import Worker, start_workers, stop_all
from cifar_spec.bench.paired import (
    Arm,
    Samples,
    Unsupported,
    build_arm,
    measure_pairs,
    pairs_to_take,
)
from cifar_spec.bench.progress import Progress, hidden
from cifar_spec.bench.records import COUNT_PROCESSES, WORKERS, Case
from cifar_spec.errors import WorkerError

PAIRS_PER_WORKER = 8  # 24 pairs in all, which an order-statistics CI at 95% needs >= 6 of


def worker_threads(asked: int | None) -> int:
    """The torch threads each worker runs: as asked, else every core here."""
    return asked or machine.available_cores()


@dataclass
class Suite:
    """Workers of this Python, the reference arms they hold, and the peaks they measured."""

    workers: int = WORKERS
    min_pairs: int = PAIRS_PER_WORKER
    threads: int | None = None  # torch threads per worker; None: every core this process has
    python: str = sys.executable  # its workers must import this process's torch and cifar_spec
    progress: Progress = field(default_factory=hidden)  # a bar that names the case and pair
    _workers: list[Worker] = field(default_factory=list, init=False)
    _references: dict = field(default_factory=dict, init=False)
    _peaks: dict = field(default_factory=dict, init=False)

    def start(self) -> Suite:
        if not self._workers:
            self.progress.doing(f"starting {report.plural(self.workers, 'worker')}")
            self._workers = start_workers(
                self.python,
                self.workers,
                "w",
                worker_threads(self.threads),
                expect=machine.own_code(),
            )
        return self

    def stop(self) -> None:
        stop_all(self._workers)
        self._workers = []

    def __enter__(self) -> Suite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reference_of(self, case: Case) -> Case:
        if case.variant in cases.LOOPS:
            return Case(case.device, cases.LOOP_REFERENCE, case.batch)
        return Case(case.device, "eager", case.batch)

    def arms(self, case: Case) -> list[Arm]:
        """`case` built in every worker (kept for a reference, which many cases share)."""
        if case in self._references:
            return self._references[case]
        self.start().progress.doing(f"{case.name}: building and warming up")
        arms = [build_arm(w, case) for w in self.start()._workers]
        if case.variant in ("eager", cases.LOOP_REFERENCE):
            self._references[case] = arms
        return arms

    def drop(self, arms: list[Arm]) -> None:
        if arms and arms[0].case not in self._references:
            for arm in arms:
                arm.worker.drop(arm.case.key)

    def measure(self, case: Case) -> dict:
        """The row of figures for `case`; raises Unsupported where it cannot run.

        A worker that crashed or hung fails this case only: the suite starts afresh
        (new workers, references built again) for the next one.
        """
        try:
            return self._measure(case)
        except WorkerError:
            self.stop()
            self._references.clear()
            raise

    def pairs_of(self, case: Case) -> int:
        """The pairs of rounds `case` takes: fewer for a reference, paired with itself."""
        own = case == self.reference_of(case)
        return pairs_to_take(None, self.workers, self.min_pairs // 2 if own else self.min_pairs)

    def _measure(self, case: Case) -> dict:
        reference = self.arms(self.reference_of(case))
        planned, done = self.pairs_of(case), 0

        def tick() -> None:
            nonlocal done
            done += 1
            self.progress.advance(f"{case.name}: {done}/{planned} pairs")

        if case == reference[0].case:
            arms = reference
            self.progress.doing(f"{case.name}: 0/{planned} pairs")
            samples = measure_pairs(list(zip(reference, reference)), self.min_pairs // 2, tick=tick)
        else:
            arms = self.arms(case)
            self.progress.doing(f"{case.name}: 0/{planned} pairs")
            try:
                samples = measure_pairs(list(zip(reference, arms)), self.min_pairs, tick=tick)
            finally:
                self.drop(arms)
        return self.row(case, samples, arms[0].steps)

    def peak(self, device: str, dtype: torch.dtype) -> figures.Peak:
        """The best peak any worker measured (an upper bound: the best of all tries)."""
        key = (device, str(dtype))
        if key not in self._peaks:
            name = str(dtype).removeprefix("torch.")
            self.start().progress.doing(f"measuring the peak of {device} {name}")
            replies = [
                w.call({"op": "peak", "device": device, "dtype": name}, 600)
                for w in self.start()._workers
            ]
            best = max(replies, key=lambda r: r["best"])
            self._peaks[key] = figures.Peak(
                best["best"], best["median"], best["shape"], best["tries"], best["precision"]
            )
        return self._peaks[key]

    def row(self, case: Case, samples: Samples, steps: int) -> dict:
        time = samples.arm(1)
        is_loop = case.variant in cases.LOOPS
        images = cases.LOOP_IMAGES if is_loop else case.batch
        # A loop runs the step at batch 1: its arithmetic per image is the eager step's.
        options = cases.VARIANTS["eager" if is_loop else case.variant]
        peak = self.peak(case.device, cases.precision(options))
        row = figures.rate_figures(
            case.device,
            case.variant,
            case.batch,
            images / time.median,
            figures.counted_flops_per_image(options),
            peak,
        )
        speedup = samples.ratio().inverted()
        is_reference = case == self.reference_of(case)
        row.update(
            seconds_per_step=time.median,
            seconds_per_step_ci=[time.low, time.high],
            spread=time.spread,
            samples=time.samples,
            processes=time.processes,
            steps_per_round=steps,
            speedup=1.0 if is_reference else speedup.median,
            speedup_ci=None if is_reference else [speedup.low, speedup.high],
            # what each interval is: 0.95, or less with too few samples (`stats.Estimate.note`)
            speedup_ci_confidence=None if is_reference else speedup.confidence,
            speedup_ci_note="" if is_reference else speedup.note,
            seconds_per_step_ci_confidence=time.confidence,
            seconds_per_step_ci_note=time.note,
            speedup_spread=None if is_reference else speedup.spread,
            reference=self.reference_of(case).variant,
            noisy=time.noisy,  # the spread shown beside it; the speed-up's is in its interval
            step_times=[[b for _, b in g] for g in samples.groups],  # per worker, for the gate
        )
        gpu = samples.gpu_arm(1)
        if gpu is not None:
            row["gpu_seconds_per_step"] = gpu.median
        return row


def planned_cases(
    devices: list[str],
    variants: list[str] | None = None,
    batches: list[int] | None = None,
    loops: bool = True,
) -> list[Case]:
    """Every case on `devices`: eager first in each batch, then the others; then the loops
    where nothing narrower was asked."""
    planned = []
    for device in devices:
        names = sorted(variants or list(cases.VARIANTS), key=lambda n: n != "eager")
        for batch in batches or records.BATCHES[torch.device(device).type]:
            planned += [Case(device, name, batch) for name in names]
        if loops and device == "cpu" and variants is None and batches is None:
            planned += [Case("cpu", name, 1) for name in cases.LOOPS]
    return planned


def measure_all(
    suite: Suite,
    devices: list[str],
    variants: list[str] | None = None,
    batches: list[int] | None = None,
    loops: bool = True,
    skipped: Callable[[Case, str], None] | None = None,
) -> list[dict]:
    """Every case of `planned_cases` measured; one that cannot run is said to `skipped`. The
    suite's bar counts the pairs of every case, a skipped case's counted as done."""
    planned = planned_cases(devices, variants, batches, loops)
    suite.progress.expect(sum(suite.pairs_of(case) for case in planned))
    rows = []
    for case in planned:
        options = cases.VARIANTS.get(case.variant)  # a loop has no step options
        reason = options and cases.skip_reason(options, case.device)
        try:
            if reason:
                raise Unsupported(reason)
            rows.append(suite.measure(case))
        except Unsupported as why:
            suite.progress.advance(steps=suite.pairs_of(case))
            if skipped:
                skipped(case, str(why))
    return rows


def measure_rows(
    devices: list[str],
    variants: list[str] | None,
    batches: list[int] | None,
    workers: int | None,
    threads: int | None,
    show: bool,
) -> list[dict]:
    """`measure_all` in a suite of its own, under a progress bar drawn if `show`; a skipped
    case is said above it."""
    with Progress(show) as bar:
        with Suite(workers=workers or WORKERS, threads=threads, progress=bar) as suite:
            return measure_all(
                suite,
                devices,
                variants,
                batches,
                skipped=lambda case, why: bar.note(f"skipped {case.key}: {why}"),
            )


def count_rows(cases: list[Case], processes: int | None, cache_sim: bool, show: bool) -> list[dict]:
    """The rows of counts of `cases` in this Python's counting workers, under a progress bar
    drawn if `show`; a case that one process could not run is said on stderr and left out,
    not judged on the others."""
    counted = counts.count_all(
        {"w": sys.executable},
        processes or COUNT_PROCESSES,
        cases,
        cache_sim,
        {"w": machine.own_code()},
        show,
    )["w"]
    skipped = {case: why for p in counted for case, why in p.unsupported.items()}
    for case, why in skipped.items():
        print(f"skipped {case.key}: {why}", file=sys.stderr, flush=True)
    return counts.as_rows(counted, [c for c in cases if c not in skipped])

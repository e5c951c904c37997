"""A/B of two Python environments in one run: the gate for a PyTorch upgrade.

Two environments (two venvs with two torch builds, or the venvs of two
checkouts) are measured side by side, not on different days: workers of each
are started in turn, every case is built in a worker of each, and their
rounds alternate, baseline and candidate, one running at a time. Each adjacent
pair gives one ratio candidate / baseline of seconds per step; the median over
all pairs, its 95% interval (`stats.estimate`, clustered by worker pair) and
the threshold give the verdict. An inconclusive case gets more pairs until the
time budget is spent.

A case that moved (a regression or an improvement), and with `attribute` every case, is then
profiled (`Arm.profile`): each worker of each arm runs `profiled.PROFILED_STEPS` steps under
torch.profiler, after the case's timed rounds and outside its budget, and the case's change
is attributed to operators and kernels (`attribution.attributed`). The verdict stays on the
unprofiled rounds.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable

from cifar_spec.bench import attribution, counts, find_modules, records, report, stats
from cifar_spec.bench._handle import Expected, Worker, start_workers, stop_all
from cifar_spec.bench.paired import (
    BLOCK,
    Arm,
    Samples,
    Unsupported,
    build_arm,
    measure_pairs,
    pairs_to_take,
)
from cifar_spec.bench.profiled import PROFILED_STEPS, Profile
from cifar_spec.bench.progress import Progress, hidden
from cifar_spec.bench.records import (
    COUNT_PROCESSES,
    INSTRUCTIONS,
    TIME,
    WORKERS,
    Case,
    Comparison,
    Judged,
)
from cifar_spec.bench.spawn import clean_environment, probe_command, resolve_python
from cifar_spec.errors import BadEnvironment
from cifar_spec.files import write_atomically, write_json

COMPARE_THRESHOLD = 0.05  # of time: no change within +-5%, the default


MAX_WORKERS = 8  # per environment, grown one pair at a time while a case is inconclusive


PAIRS_BEFORE_VERDICT = 4  # per worker pair


# Worker pairs before any verdict but inconclusive: one process a side cannot tell the two
# environments from the two processes' own luck (two workers of one environment, one
# thread each, were seen 13-22% apart in every one of five fresh builds of a case).
MIN_WORKER_PAIRS = 2


def check_python(python: str) -> Expected:
    """Refuse, before any work, a Python that does not exist or lacks torch or cifar_spec;
    else the torch and cifar_spec its workers must import."""
    not_python = (
        f"{python} is not a Python interpreter (no such file, or it does not run); "
        "give the path of a venv's bin/python"
    )
    try:
        done = subprocess.run(
            probe_command(python, find_modules.source()),
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_environment(),
        )
    except (OSError, subprocess.TimeoutExpired):
        raise BadEnvironment(not_python) from None
    lines = done.stdout.strip().splitlines()
    said = lines[-1:]
    if done.returncode or not said:
        raise BadEnvironment(not_python)
    missing = said[0].removeprefix("missing ")
    if said[0] != "found" and (missing == said[0] or missing not in find_modules.MODULES):
        raise odd_answer(python, said[0])
    if missing == "torch":
        raise BadEnvironment(
            f"{python} cannot import torch; install it with `{python} -m pip install torch`"
        )
    if said[0] != "found":
        raise BadEnvironment(
            f"{python} cannot import {missing}; install this checkout there with "
            f"`{python} -m pip install --no-deps -e .` (torch alone is needed beside it)"
        )
    return found_code(python, lines[-2] if len(lines) > 1 else "")


def odd_answer(python: str, line: str) -> BadEnvironment:
    return BadEnvironment(
        f"{python} answered the check for torch and cifar_spec with {line!r:.80}, "
        "not as a Python does; give the path of a venv's bin/python"
    )


def found_code(python: str, line: str) -> Expected:
    """The check's line of files, as a worker's hello names them (`machine.imports`)."""
    try:
        files = json.loads(line)
        torch_file, init = files["torch"], files["cifar_spec"]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise odd_answer(python, line) from None
    if not all(isinstance(f, (str, type(None))) for f in (torch_file, init)):
        raise odd_answer(python, line)
    folder = os.path.dirname(init) if init else None  # a namespace package has no file
    return Expected(
        {"torch_file": torch_file, "cifar_spec": folder}, f"the check of {python} found"
    )


def start_side_by_side(
    baseline: str,
    candidate: str,
    workers: int,
    threads: int | None,
    expected: dict[str, Expected] | None = None,
) -> tuple[list[Worker], list[Worker]]:
    """Workers of each environment, started alternately: b1, c1, b2, c2 ...; `expected`:
    {side: the code its workers must import}, as `check_python` found it."""
    expected = expected or {}
    base: list[Worker] = []
    cand: list[Worker] = []
    try:
        for _ in range(workers):
            label = f"baseline{len(base) + 1}-"
            base += start_workers(baseline, 1, label, threads, expect=expected.get("baseline"))
            label = f"candidate{len(cand) + 1}-"
            cand += start_workers(candidate, 1, label, threads, expect=expected.get("candidate"))
    except BaseException:
        stop_all(base + cand)
        raise
    return base, cand


def compare_case(
    base: list[Worker],
    cand: list[Worker],
    case: Case,
    threshold: float,
    seconds: float,
    grow: Callable[[], None] | None = None,
    min_pairs: int = PAIRS_BEFORE_VERDICT,
    bar: Progress | None = None,
    attribute: bool = False,
    traces: str | None = None,
) -> Judged:
    """One case's verdict. While it is inconclusive and time is left, more pairs are taken,
    and `grow` adds a fresh pair of workers (more processes, not only more rounds, is what
    narrows an interval that the processes' disagreement widens). `bar` counts the pairs.
    Then, where it moved or `attribute` asks, its attribution from profiled rounds, their
    traces written into the folder `traces` if given."""
    deadline = time.perf_counter() + seconds
    bar = bar or hidden()
    arms: list = []
    samples = Samples()

    taken = 0  # pairs so far (the samples hold a block's only once it ends)

    def tick() -> None:
        nonlocal taken
        taken += 1
        left = max(0.0, deadline - time.perf_counter())
        bar.advance(f"{case.name}: {taken} pairs, {left:.0f} s of its budget left")

    try:
        while True:
            bar.doing(f"{case.name}: building in {len(base)} + {len(cand)} workers")
            for b, c in list(zip(base, cand))[len(arms) :]:
                arms.append((build_arm(b, case), build_arm(c, case)))
            bar.expect(pairs_to_take(samples, len(arms), min_pairs))
            measure_pairs(arms, min_pairs, samples, tick)
            ratio = samples.ratio()
            if judge(ratio, threshold) != records.INCONCLUSIVE:
                break
            if time.perf_counter() >= deadline:
                break
            if grow and len(base) < MAX_WORKERS:
                grow()
            else:  # no worker to add: more pairs from those there are (it spun on none)
                min_pairs += BLOCK
        judged = judged_time(case, judge(ratio, threshold), ratio, samples.arm(0), samples.arm(1))
        if not (judged.moved or attribute):
            return judged
        bar.doing(
            f"{case.name}: {PROFILED_STEPS} profiled steps in each of {2 * len(arms)} workers"
        )
        return attribution.attributed(judged, *profile_arms(arms, traces))
    except Unsupported as why:
        return records.skipped(case, TIME, str(why))
    finally:
        for pair in arms:
            for arm in pair:
                arm.worker.drop(case.key)


def trace_path(folder: str | None, case: Case, side: str, number: int) -> str | None:
    """Where one worker's profiler trace goes (absolute: a worker runs in another folder)."""
    if folder is None:
        return None
    return os.path.abspath(os.path.join(folder, f"{case.key}-{side}{number}.json"))


def profile_arms(
    arms: list[tuple[Arm, Arm]], traces: str | None = None
) -> tuple[list[Profile], list[Profile]]:
    """(the baseline's profiles, the candidate's): each worker's profiled steps, after every
    timed round of the case, the two sides in turn as their rounds were."""
    base, cand = [], []
    for number, (a, b) in enumerate(arms, 1):
        base.append(a.profile(trace=trace_path(traces, a.case, "baseline", number)))
        cand.append(b.profile(trace=trace_path(traces, b.case, "candidate", number)))
    return base, cand


def judged_time(
    case: Case, verdict: str, ratio: stats.Estimate, base: stats.Estimate, cand: stats.Estimate
) -> Judged:
    """A case judged on paired rounds: the median ratio and its interval, each side's median
    seconds per step; every estimate in full for the JSON. Moved: a regression or an
    improvement, whose attribution the table prints."""
    estimates = {"ratio": ratio, "baseline": base, "candidate": cand}
    return Judged(
        case,
        TIME,
        verdict,
        ratio.median,
        ratio.low,
        ratio.high,
        base.median,
        cand.median,
        moved=verdict in (records.REGRESSION, records.IMPROVEMENT),
        figures={"estimates": {k: e.as_dict() for k, e in estimates.items()}},
    )


def judge(ratio: stats.Estimate, threshold: float) -> str:
    """The interval's verdict, from MIN_WORKER_PAIRS pairs of processes or more."""
    if ratio.processes < MIN_WORKER_PAIRS:
        return records.INCONCLUSIVE
    return records.verdict(ratio.low, ratio.high, threshold)


def compare_times(
    baseline: str,
    candidate: str,
    cases: list[Case],
    threshold: float,
    seconds: float,
    workers: int = WORKERS,
    threads: int | None = None,
    log: Callable[[Judged], None] | None = None,
    expected: dict[str, Expected] | None = None,
    bar: Progress | None = None,
    attribute: bool = False,
    traces: str | None = None,
) -> tuple[dict, list[Judged]]:
    """({'baseline': info, 'candidate': info}, a result per case) within about `seconds` (the
    profiled rounds of `compare_case` after it); `expected`: {side: the code its workers
    must import}; `bar` shows the progress."""
    start = time.perf_counter()
    bar = bar or hidden()
    bar.doing(f"starting {workers} + {workers} workers")
    base, cand = start_side_by_side(baseline, candidate, workers, threads, expected)

    def grow() -> None:
        bar.doing("inconclusive: starting a fresh pair of workers")
        more_base, more_cand = start_side_by_side(baseline, candidate, 1, threads, expected)
        base.extend(more_base)
        cand.extend(more_cand)

    try:
        envs = {"baseline": base[0].info, "candidate": cand[0].info}
        results = []
        for i, case in enumerate(cases):
            left = seconds - (time.perf_counter() - start)
            share = max(0.0, left / (len(cases) - i))
            result = compare_case(
                base,
                cand,
                case,
                threshold,
                share,
                grow,
                bar=bar,
                attribute=attribute,
                traces=traces,
            )
            results.append(result)
            if log:
                log(result)
        return envs, results
    finally:
        stop_all(base + cand)


def compare_counts(
    baseline: str,
    candidate: str,
    cases: list[Case],
    threshold: float,
    processes: int,
    cache_sim: bool = False,
    top: int = counts.TOP,
    expected: dict[str, Expected] | None = None,
    show: bool = False,
) -> tuple[dict, list[Judged]]:
    """({'baseline': info, 'candidate': info}, a judged case per case, skipped where a process
    could not run it); `expected`: {side: the code its workers must import}; the progress in
    a bar drawn if `show`."""
    counted = counts.count_all(
        {"baseline": baseline, "candidate": candidate},
        processes,
        cases,
        cache_sim,
        expected or {},
        show,
    )
    base, cand = counted["baseline"], counted["candidate"]
    envs = {"baseline": base[0].info, "candidate": cand[0].info}
    judged = []
    for case in cases:
        why = next((p.unsupported[case] for p in base + cand if case in p.unsupported), None)
        if why:
            judged.append(records.skipped(case, INSTRUCTIONS, why))
            continue
        judged.append(
            counts.judge(
                case, [p.counts[case] for p in base], [p.counts[case] for p in cand], threshold, top
            )
        )
    return envs, judged


def run(
    baseline: str,
    candidate: str,
    cases: list[Case],
    thresholds: dict[str, float],
    seconds: float,
    workers: int | None,
    threads: int | None,
    cache_sim: bool,
    say: Callable[[str], None],
    show: bool = False,
    attribute: bool = False,
    traces: str | None = None,
) -> Comparison:
    """Compare two environments on the metrics of `thresholds` ({metric: threshold}): both
    Pythons checked before any work, each metric's table said as it ends, then the verdicts;
    the progress in a bar drawn if `show`. On time, `attribute` profiles every case, not
    only those that moved; `traces` is a folder for their profiler traces."""
    baseline, candidate = resolve_python(baseline), resolve_python(candidate)
    expected = {"baseline": check_python(baseline), "candidate": check_python(candidate)}
    comparison = Comparison(thresholds=dict(thresholds))
    if TIME in thresholds:
        with Progress(show) as bar:
            envs, judged = compare_times(
                baseline,
                candidate,
                cases,
                thresholds[TIME],
                seconds,
                workers or WORKERS,
                threads,
                expected=expected,
                bar=bar,
                attribute=attribute,
                traces=traces,
            )
        comparison.environments[TIME], comparison.judged[TIME] = envs, judged
        say(report.time_report(comparison))
    if INSTRUCTIONS in thresholds:
        envs, judged = compare_counts(
            baseline,
            candidate,
            cases,
            thresholds[INSTRUCTIONS],
            workers or COUNT_PROCESSES,
            cache_sim,
            expected=expected,
            show=show,
        )
        comparison.environments[INSTRUCTIONS], comparison.judged[INSTRUCTIONS] = envs, judged
        say(report.count_report(comparison))
    for line in report.verdict_lines(comparison):
        say(line)
    return comparison


def write(comparison: Comparison, json_path: str | None, markdown_path: str | None) -> None:
    """The comparison as JSON and as markdown (a pull request's comment), where asked."""
    if json_path:
        write_json(json_path, comparison.as_dict())
    if markdown_path:
        write_atomically(markdown_path, report.markdown(comparison).encode())

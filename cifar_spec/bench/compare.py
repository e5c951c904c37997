"""A/B of two Python environments in one run: the gate for a PyTorch upgrade.

Two environments (two venvs with two torch builds, or the venvs of two
checkouts) are measured side by side, not on different days: workers of each
are started in turn, every case is built in a worker of each, and their
rounds alternate, baseline and candidate, one running at a time. Each adjacent
pair gives one ratio candidate / baseline of seconds per step; the median over
all pairs, its 95% interval (`stats.estimate`, clustered by worker pair) and
the threshold give the verdict. An inconclusive case gets more pairs until the
time budget is spent.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from cifar_spec.bench import callgrind, counts, find_modules, records, stats
from cifar_spec.bench._handle import Expected, Worker, start_workers, stop_all
from cifar_spec.bench.paired import Samples, Unsupported, build_arm, measure_pairs
from cifar_spec.bench.records import Case
from cifar_spec.bench.spawn import clean_environment, probe_command
from cifar_spec.errors import BadEnvironment

WORKERS = 3  # per environment to start with: pairs come from 3 pairs of fresh processes


MAX_WORKERS = 8  # per environment, grown one pair at a time while a case is inconclusive


MIN_PAIRS = 4  # per worker pair before a verdict may be taken


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


@dataclass(frozen=True)
class Result:
    """One case's verdict, or why it was not measured."""

    case: Case
    verdict: str
    ratio: stats.Estimate | None = None
    baseline: stats.Estimate | None = None  # seconds per step
    candidate: stats.Estimate | None = None
    reason: str = ""

    def as_dict(self) -> dict:
        out = {
            "device": self.case.device,
            "variant": self.case.variant,
            "batch": self.case.batch,
            "verdict": self.verdict,
            "reason": self.reason,
        }
        for name in ("ratio", "baseline", "candidate"):
            value = getattr(self, name)
            out[name] = value.as_dict() if value else None
        return out


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
    min_pairs: int = MIN_PAIRS,
) -> Result:
    """One case's verdict. While it is inconclusive and time is left, more pairs are taken,
    and `grow` adds a fresh pair of workers (more processes, not only more rounds, is what
    narrows an interval that the processes' disagreement widens)."""
    deadline = time.perf_counter() + seconds
    arms: list = []
    samples = Samples()
    try:
        while True:
            for b, c in list(zip(base, cand))[len(arms) :]:
                arms.append((build_arm(b, case), build_arm(c, case)))
            measure_pairs(arms, min_pairs, samples)
            ratio = samples.ratio()
            if judge(ratio, threshold) != records.INCONCLUSIVE:
                break
            if time.perf_counter() >= deadline:
                break
            if grow and len(base) < MAX_WORKERS:
                grow()
    except Unsupported as why:
        return Result(case, records.SKIPPED, reason=str(why))
    finally:
        for pair in arms:
            for arm in pair:
                arm.worker.call({"op": "drop", "key": case.key}, 60)
    return Result(case, judge(ratio, threshold), ratio, samples.arm(0), samples.arm(1))


def judge(ratio: stats.Estimate, threshold: float) -> str:
    """The interval's verdict, from MIN_WORKER_PAIRS pairs of processes or more."""
    if ratio.processes < MIN_WORKER_PAIRS:
        return records.INCONCLUSIVE
    return records.verdict(ratio.low, ratio.high, threshold)


def compare(
    baseline: str,
    candidate: str,
    cases: list[Case],
    threshold: float,
    seconds: float,
    workers: int = WORKERS,
    threads: int | None = None,
    log: Callable[[Result], None] | None = None,
    expected: dict[str, Expected] | None = None,
) -> tuple[dict, list[Result]]:
    """({'baseline': info, 'candidate': info}, a result per case) within about `seconds`;
    `expected`: {side: the code its workers must import}."""
    start = time.perf_counter()
    base, cand = start_side_by_side(baseline, candidate, workers, threads, expected)

    def grow() -> None:
        more_base, more_cand = start_side_by_side(baseline, candidate, 1, threads, expected)
        base.extend(more_base)
        cand.extend(more_cand)

    try:
        envs = {"baseline": base[0].info, "candidate": cand[0].info}
        results = []
        for i, case in enumerate(cases):
            left = seconds - (time.perf_counter() - start)
            share = max(0.0, left / (len(cases) - i))
            result = compare_case(base, cand, case, threshold, share, grow)
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
) -> tuple[dict, list[counts.Judged], list[Result]]:
    """({'baseline': info, 'candidate': info}, a judged case per case counted, the skipped);
    `expected`: {side: the code its workers must import}."""
    counted = callgrind.count_all(
        {"baseline": baseline, "candidate": candidate}, processes, cases, cache_sim, expected
    )
    base, cand = counted["baseline"], counted["candidate"]
    envs = {"baseline": base[0].info, "candidate": cand[0].info}
    judged, skipped = [], []
    for case in cases:
        why = next((p.unsupported[case] for p in base + cand if case in p.unsupported), None)
        if why:
            skipped.append(Result(case, records.SKIPPED, reason=why))
            continue
        judged.append(
            counts.judge(
                case, [p.counts[case] for p in base], [p.counts[case] for p in cand], threshold, top
            )
        )
    return envs, judged, skipped


def decide(time_results: list[Result] | None, judged: list[counts.Judged] | None) -> dict:
    """{case: (verdict, the metric that decided it)}: counts where they ran (they repeat
    exactly; time on a shared CPU does not), time elsewhere."""
    out = {}
    for r in time_results or []:
        out[r.case] = (r.verdict, "time")
    for j in judged or []:
        out[j.case] = (j.verdict, "instructions")
    return out


def closing_line(code: int, decided: dict) -> str:
    """compare's last line, which says what to do about an inconclusive run."""
    if code == 0:
        return "compare: no regression"
    if code == 1:
        return "compare: REGRESSION"
    metrics = {m for v, m in decided.values() if v == records.INCONCLUSIVE}
    if not metrics:
        return "compare: inconclusive (no case was judged: every one was skipped)"
    if metrics == {"time"}:
        return "compare: inconclusive (give it more --seconds)"
    return "compare: inconclusive (counting processes of one side disagree: see the notes)"

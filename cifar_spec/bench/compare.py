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

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from cifar_spec.bench import count, stats
from cifar_spec.bench.paired import Case, Samples, Unsupported, build_arm, measure_pairs
from cifar_spec.bench.spawn import clean_environment, probe_command
from cifar_spec.bench.worker import Worker, start_workers, stop_all

WORKERS = 3  # per environment to start with: pairs come from 3 pairs of fresh processes
MAX_WORKERS = 8  # per environment, grown one pair at a time while a case is inconclusive
MIN_PAIRS = 4  # per worker pair before a verdict may be taken
# Worker pairs before any verdict but inconclusive: one process a side cannot tell the two
# environments from the two processes' own luck (two workers of one environment, one
# thread each, were seen 13-22% apart in every one of five fresh builds of a case).
MIN_WORKER_PAIRS = 2


class BadEnvironment(ValueError):
    """A Python that cannot run the workers; the message says which and how to fix it."""


# Finds the modules without importing them: importing torch takes seconds, and the
# workers import it anyway (a torch that is found but will not import fails their start,
# naming the error). Its last line is "missing NAME" for the first module missing, or "found".
MODULES = ("torch", "cifar_spec", "cifar_spec.bench.worker")
PROBE = f"""
import importlib.util
for name in {MODULES!r}:
    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:
        found = False
    if not found:
        print("missing", name)
        break
else:
    print("found")
"""


def check_python(python: str) -> None:
    """Refuse, before any work, a Python that does not exist or lacks torch or cifar_spec."""
    not_python = (
        f"{python} is not a Python interpreter (no such file, or it does not run); "
        "give the path of a venv's bin/python"
    )
    try:
        done = subprocess.run(
            probe_command(python, PROBE),
            capture_output=True,
            text=True,
            timeout=120,
            env=clean_environment(),
        )
    except (OSError, subprocess.TimeoutExpired):
        raise BadEnvironment(not_python) from None
    said = done.stdout.strip().splitlines()[-1:]
    if done.returncode or not said:
        raise BadEnvironment(not_python)
    missing = said[0].removeprefix("missing ")
    if said[0] != "found" and (missing == said[0] or missing not in MODULES):
        raise BadEnvironment(
            f"{python} answered the check for torch and cifar_spec with {said[0]!r:.80}, "
            "not as a Python does; give the path of a venv's bin/python"
        )
    if missing == "torch":
        raise BadEnvironment(
            f"{python} cannot import torch; install it with `{python} -m pip install torch`"
        )
    if said[0] != "found":
        raise BadEnvironment(
            f"{python} cannot import {missing}; install this checkout there with "
            f"`{python} -m pip install --no-deps -e .` (torch alone is needed beside it)"
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
    baseline: str, candidate: str, workers: int, threads: int | None
) -> tuple[list[Worker], list[Worker]]:
    """Workers of each environment, started alternately: b1, c1, b2, c2 ..."""
    base: list[Worker] = []
    cand: list[Worker] = []
    try:
        for _ in range(workers):
            base += start_workers(baseline, 1, f"baseline{len(base) + 1}-", threads)
            cand += start_workers(candidate, 1, f"candidate{len(cand) + 1}-", threads)
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
            if judge(ratio, threshold) != stats.INCONCLUSIVE:
                break
            if time.perf_counter() >= deadline:
                break
            if grow and len(base) < MAX_WORKERS:
                grow()
    except Unsupported as why:
        return Result(case, "skipped", reason=str(why))
    finally:
        for pair in arms:
            for arm in pair:
                arm.worker.call({"op": "drop", "key": case.key}, 60)
    return Result(case, judge(ratio, threshold), ratio, samples.arm(0), samples.arm(1))


def judge(ratio: stats.Estimate, threshold: float) -> str:
    """The interval's verdict, from MIN_WORKER_PAIRS pairs of processes or more."""
    if ratio.processes < MIN_WORKER_PAIRS:
        return stats.INCONCLUSIVE
    return stats.verdict(ratio, threshold)


def compare(
    baseline: str,
    candidate: str,
    cases: list[Case],
    threshold: float,
    seconds: float,
    workers: int = WORKERS,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict, list[Result]]:
    """({'baseline': info, 'candidate': info}, a result per case) within about `seconds`."""
    start = time.perf_counter()
    base, cand = start_side_by_side(baseline, candidate, workers, threads)

    def grow() -> None:
        more_base, more_cand = start_side_by_side(baseline, candidate, 1, threads)
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
                log(format_result(result))
        return envs, results
    finally:
        stop_all(base + cand)


def exit_code(results: list[Result]) -> int:
    """1 on any regression, else 3 when any case is inconclusive or none was judged, else 0."""
    return exit_code_of([r.verdict for r in results])


def describe(info: dict) -> str:
    where = info.get("gpu_name") or f"{info['cpu_model']}, {info['threads']} threads"
    rev = info.get("git") or "not a checkout"
    return f"torch {info['torch']}, cifar_spec {rev}, {where} ({info['python']})"


def format_result(r: Result) -> str:
    name = f"{r.case.device} {r.case.variant} batch {r.case.batch}"
    if r.ratio is None:
        return f"{name:<58} {r.verdict}: {r.reason}"
    noisy = " noisy" if r.ratio.noisy else ""
    return (
        f"{name:<58} {r.baseline.median * 1e3:>9.3f}ms {r.candidate.median * 1e3:>9.3f}ms "
        f"{r.ratio.median:>7.3f} [{r.ratio.low:.3f}, {r.ratio.high:.3f}] "
        f"{r.ratio.spread:>6.1%}{noisy}  {r.verdict}"
    )


def format_report(envs: dict, results: list[Result], threshold: float) -> str:
    lines = [
        f"baseline:  {describe(envs['baseline'])}",
        f"candidate: {describe(envs['candidate'])}",
        f"verdicts at +-{threshold:.0%}: the 95% interval of candidate/baseline (step time; "
        "above 1 is slower), median over quads of paired rounds (A B B A); interval: the "
        "wider of a two-level bootstrap and a t-interval of the worker pairs' medians",
        f"{'case':<58} {'baseline':>11} {'candidate':>11} {'ratio [95% CI]':>23} "
        f"{'spread':>6}  verdict",
    ]
    lines += [format_result(r) for r in results]
    return "\n".join(lines)


# Instruction counts (`--metric instructions`): deterministic verdicts on the CPU.


def compare_counts(
    baseline: str,
    candidate: str,
    cases: list[Case],
    threshold: float,
    processes: int,
    cache_sim: bool = False,
    top: int = count.TOP,
) -> tuple[dict, list[count.Judged], list[Result]]:
    """({'baseline': info, 'candidate': info}, a judged case per case counted, the skipped)."""
    counted = count.count_all(
        {"baseline": baseline, "candidate": candidate}, processes, cases, cache_sim
    )
    base, cand = counted["baseline"], counted["candidate"]
    envs = {"baseline": base[0].info, "candidate": cand[0].info}
    judged, skipped = [], []
    for case in cases:
        why = next((p.unsupported[case] for p in base + cand if case in p.unsupported), None)
        if why:
            skipped.append(Result(case, "skipped", reason=why))
            continue
        judged.append(
            count.judge(
                case, [p.counts[case] for p in base], [p.counts[case] for p in cand], threshold, top
            )
        )
    return envs, judged, skipped


def format_count_report(
    envs: dict, judged: list[count.Judged], skipped: list[Result], threshold: float
) -> str:
    lines = [
        f"baseline:  {describe(envs['baseline'])}",
        f"candidate: {describe(envs['candidate'])}",
        f"verdicts at +-{threshold:.1%} on " + count.LEGEND,
        *count.header(),
    ]
    for j in judged:
        lines += count.format_judged(j)
    lines += [format_result(r) for r in skipped]
    return "\n".join(lines)


def decide(time_results: list[Result] | None, judged: list[count.Judged] | None) -> dict:
    """{case: (verdict, the metric that decided it)}: counts where they ran (they repeat
    exactly; time on a shared CPU does not), time elsewhere."""
    out = {}
    for r in time_results or []:
        out[r.case] = (r.verdict, "time")
    for j in judged or []:
        out[j.case] = (j.verdict, "instructions")
    return out


def exit_code_of(verdicts: list[str]) -> int:
    """1 on any regression, else 3 when any case is inconclusive or none was judged, else 0."""
    if stats.REGRESSION in verdicts:
        return 1
    judged = [v for v in verdicts if v != "skipped"]
    return 3 if not judged or stats.INCONCLUSIVE in judged else 0


def closing_line(code: int, decided: dict) -> str:
    """compare's last line, which says what to do about an inconclusive run."""
    if code == 0:
        return "compare: no regression"
    if code == 1:
        return "compare: REGRESSION"
    metrics = {m for v, m in decided.values() if v == stats.INCONCLUSIVE}
    if not metrics:
        return "compare: inconclusive (no case was judged: every one was skipped)"
    if metrics == {"time"}:
        return "compare: inconclusive (give it more --seconds)"
    return "compare: inconclusive (counting processes of one side disagree: see the notes)"


def format_markdown(
    envs: dict,
    time_results: list[Result] | None,
    judged: list[count.Judged] | None,
    thresholds: dict,
    skipped: list[Result] = (),
) -> str:
    """compare's verdicts as a markdown table, for a pull-request comment."""
    decided = decide(time_results, judged)
    times = {r.case: r for r in time_results or []}
    counts = {j.case: j for j in judged or []}
    lines = [
        "### cifar-spec compare",
        "",
        f"- baseline: {describe(envs['baseline'])}",
        f"- candidate: {describe(envs['candidate'])}",
        "- thresholds: "
        + ", ".join(f"{metric} +-{value:.1%}" for metric, value in thresholds.items()),
        "",
        "| case | time ratio [95% CI] | instructions ratio [range] | verdict | decided by |",
        "|---|---|---|---|---|",
    ]
    for case, (verdict, metric) in decided.items():
        t, j = times.get(case), counts.get(case)
        time_cell = (
            f"{t.ratio.median:.3f} [{t.ratio.low:.3f}, {t.ratio.high:.3f}] {t.verdict}"
            if t and t.ratio
            else (t.verdict if t else "not run")
        )
        count_cell = f"{j.ratio:.4f} [{j.low:.4f}, {j.high:.4f}] {j.verdict}" if j else "not run"
        lines.append(
            f"| {case.device} {case.variant} batch {case.batch} | {time_cell} | {count_cell} "
            f"| **{verdict}** | {metric} |"
        )
    lines += [
        f"| {r.case.device} {r.case.variant} batch {r.case.batch} | | | skipped: {r.reason} | |"
        for r in skipped
        if r.case not in decided
    ]
    moved = [j for j in judged or [] if j.moved]
    for j in moved:
        lines += [
            "",
            f"<details><summary>{j.case.variant} batch {j.case.batch}: the functions that "
            "moved most (instructions per step)</summary>",
            "",
            "| delta | baseline | candidate | function |",
            "|---:|---:|---:|---|",
        ]
        lines += [
            f"| {c - b:+,.0f} | {b:,.0f} | {c:,.0f} | `{count.truncate(count.compact(f), 120)}` |"
            for f, b, c in j.top
        ]
        lines.append("</details>")
    return "\n".join(lines) + "\n"

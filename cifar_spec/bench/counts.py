"""Verdicts on instruction counts: a case's counts on two sides, their ratio and its range.

Counts repeat across processes (`callgrind.py` says why and what they leave out), so a
count ratio's interval is no statistical estimate but the range over every process of
both sides; `records.verdict` reads it as it reads a time ratio's 95% interval. Processes
of one side that disagree are named, and never vouch for no change.
"""

from __future__ import annotations

from statistics import fmean

from cifar_spec.bench import callgrind, operators, records
from cifar_spec.bench._handle import Expected
from cifar_spec.bench.callgrind import Count, Process
from cifar_spec.bench.progress import Progress
from cifar_spec.bench.records import INSTRUCTIONS, Case, Judged

COUNT_THRESHOLD = 0.01  # grounded in benchmarks/RESULTS.md: processes of one environment agree


AGREEMENT = 0.1  # of the threshold: processes of one side further apart than this are named


TOP = 5  # functions shown per moved case


def disagreement(values: list[float]) -> float:
    """How far apart one side's processes are: max / min - 1 (not a spread, which is IQR /
    median, a statistic of timings)."""
    return max(values) / min(values) - 1


def count_all(
    pythons: dict[str, str],
    processes: int,
    cases: list[Case],
    cache_sim: bool,
    expected: dict[str, Expected],
    show: bool,
) -> dict[str, list[Process]]:
    """`callgrind.count_all` under a progress bar, drawn if `show`: each counting process's
    steps (started, each case built, instrumented, each counted), and the last one done."""
    total = len(pythons) * processes * callgrind.progress_steps(cases)
    with Progress(show, total, unit="step") as bar:
        bar.doing(f"counting: starting {len(pythons) * processes} processes under valgrind")
        return callgrind.count_all(
            pythons, processes, cases, cache_sim, expected, progress=bar.advance
        )


def judge(
    case: Case,
    base: list[Count],
    cand: list[Count],
    threshold: float,
    top: int = TOP,
) -> Judged:
    """The case's verdict from both sides' counts: the range of the ratio over every process,
    a side whose processes disagree named; its attribution: the operators whose own
    instructions moved most, each with its kernels (`operators.diff`), and the functions."""
    b, c = judged_values(base, cand)
    ratio = (sum(c) / len(c)) / (sum(b) / len(b))
    low, high = min(c) / max(b), max(c) / min(b)
    verdict = records.verdict(low, high, threshold)
    notes = [
        f"the {side}'s processes disagree by {disagreement(values):.3%}"
        for side, values in (("baseline", b), ("candidate", c))
        if disagreement(values) > AGREEMENT * threshold
    ]
    if notes and verdict == records.NO_CHANGE:
        verdict = records.INCONCLUSIVE  # a side that does not repeat cannot vouch for no change
    moved = verdict in (records.REGRESSION, records.IMPROVEMENT) or abs(ratio - 1) > threshold
    cycles = None
    if base[0].cycles is not None and cand[0].cycles is not None:
        cycles = (fmean([x.cycles for x in base]), fmean([x.cycles for x in cand]))
    top_functions = attribution(base, cand, top)
    moved_operators = operators.diff([x.operators for x in base], [x.operators for x in cand])
    if not any(x.operators for x in base + cand):
        moved_operators = []  # counted before operators were read: the functions alone
    return Judged(
        case,
        INSTRUCTIONS,
        verdict,
        ratio,
        low,
        high,
        fmean(b),
        fmean(c),
        note="; ".join(notes),
        moved=moved,
        top=tuple(moved_operators),
        figures={
            "instructions_per_step": {"baseline": b, "candidate": c},
            "allocator_per_step": {
                "baseline": [x.allocator for x in base],
                "candidate": [x.allocator for x in cand],
            },
            "disagreement": {"baseline": disagreement(b), "candidate": disagreement(c)},
            "estimated_cycles_per_step": list(cycles) if cycles else None,
            "top_operators": [d.as_dict() for d in moved_operators],
            "top_functions": [
                {"function": f, "baseline": x, "candidate": y, "delta": y - x}
                for f, x, y in top_functions
            ],
        },
    )


def judged_values(base: list[Count], cand: list[Count]) -> tuple[list[float], list[float]]:
    """Each side's instructions per step as judged: outside the allocators (`callgrind.ALLOCATOR`,
    whose share moves with a process's history) where every count has them apart, else all of
    them (a baseline saved before they were), so that both sides count alike."""
    apart = all(x.allocator is not None for x in base + cand)

    def judged(x: Count) -> float:
        return x.instructions - x.allocator if apart else x.instructions

    return [judged(x) for x in base], [judged(x) for x in cand]


def attribution(base: list[Count], cand: list[Count], top: int) -> list[tuple[str, float, float]]:
    """The `top` functions by |instructions per step, candidate - baseline|, means over each
    side's processes."""

    def per_function(counts: list[Count]) -> dict[str, float]:
        names = {name for c in counts for name in c.functions}
        return {n: fmean([c.functions.get(n, 0.0) for c in counts]) for n in names}

    b, c = per_function(base), per_function(cand)
    rows = [(name, b.get(name, 0.0), c.get(name, 0.0)) for name in set(b) | set(c)]
    rows.sort(key=lambda r: (-abs(r[2] - r[1]), r[0]))
    return rows[:top]


KEEP_FUNCTIONS = 1e-4  # of a case's instructions: the functions a saved row keeps


def as_rows(processes: list[Process], cases: list[Case]) -> list[dict]:
    """A row per counted case: instructions per step per process, how far they disagree, the
    estimated cycles where simulated, and the functions above KEEP_FUNCTIONS of the total."""
    out = []
    for case in cases:
        counts = [p.counts[case] for p in processes if case in p.counts]
        if not counts:
            continue
        values = [c.instructions for c in counts]
        allocator = [c.allocator for c in counts]
        names = {name for c in counts for name in c.functions}
        functions = {n: fmean([c.functions.get(n, 0.0) for c in counts]) for n in names}
        keep = KEEP_FUNCTIONS * fmean(values)
        cycles = [c.cycles for c in counts if c.cycles is not None]
        out.append(
            {
                "device": case.device,
                "variant": case.variant,
                "batch": case.batch,
                "metric": "instructions",
                "instructions_per_step": values,
                "allocator_per_step": None if None in allocator else allocator,
                "disagreement": disagreement(judged_values(counts, [])[0]),
                "estimated_cycles_per_step": fmean(cycles) if cycles else None,
                "functions": {n: v for n, v in functions.items() if v >= keep},
                "operators": {
                    name: op.as_dict()
                    for name, op in operators.mean_operators([c.operators for c in counts]).items()
                },
            }
        )
    return out


def from_row(row: dict) -> list[Count]:
    """A saved row as Counts, one per process (each holding the row's mean functions)."""
    saved = {n: operators.Operator.from_dict(d) for n, d in row.get("operators", {}).items()}
    allocator = row.get("allocator_per_step") or [None] * len(row["instructions_per_step"])
    return [
        Count(v, None, row["functions"], saved, a)
        for v, a in zip(row["instructions_per_step"], allocator)
    ]

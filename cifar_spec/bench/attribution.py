"""Attribution of a change in time: which operator or kernel took it, by how much, with what
confidence, from both sides' profiled steps (`profiled.py`).

Per operator (its self CPU time, or on CUDA the device time of the kernels it launched) and,
on CUDA, per kernel under it: the baseline's and the candidate's seconds per step, their
difference and its 95% interval, its share of the step's change, and whether it ran on one
side only (appeared, vanished). The rows fill the records the counts' attribution fills
(`operators.OperatorDelta`, `operators.KernelDelta`), in a judged case's `top` and `figures`.

The interval comes from the resampling the verdict uses (`stats.py`), workers as the unit:
the wider of the two-level bootstrap (workers with replacement, then steps within each) and
a Welch t-interval of the workers' own means, here on the linear scale, where the verdict's
is on the log scale of a ratio: a difference crosses 0 and an operator that appears has a
baseline of 0, which a log cannot take. Every row draws with the same seed, so that each
resample draws the same workers and steps for every operator, as one step draws them all.

The statistic is the mean per step, where the verdict's is a median: means add up, so the
operators' differences sum to the step's exactly but for what no operator holds, and that
is shown as its own row, the remainder (Python between operators, launch gaps, an idle
device), with the share of the change the operators explain. A large remainder is not
explained. The step's change here is that of the profiled steps, whose profiler costs
both sides alike per operator; the verdict's stays on the unprofiled rounds.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from statistics import fmean
from typing import TYPE_CHECKING

from cifar_spec.bench import stats
from cifar_spec.bench.operators import APPEARED, VANISHED, KernelDelta, OperatorDelta
from cifar_spec.bench.records import Judged

if TYPE_CHECKING:  # the profiles come in as records: this module never imports torch
    from cifar_spec.bench.profiled import Profile

TOP = 5  # operators under a moved case in the terminal; --json holds them all


KERNELS = 3  # kernels under each of them


KEEP = 1e-3  # of a step's time: operators under it on both sides are pooled in SMALLER


STEP = "(the whole step)"


SMALLER = f"(every operator under {KEEP:.1%} of the step)"


REMAINDER = "(remainder: in the step, in no operator: Python between them, launch gaps, idle)"


Groups = list[list[float]]  # seconds in each step, one list per worker


def welch_difference(center: float, base: Groups, cand: Groups) -> tuple[float, float]:
    """`center` +- Welch's t-interval of the workers' own means: `stats.t_interval` of two
    sides, on the linear scale (a difference may be 0 or cross it)."""
    means = [[fmean(g) for g in side] for side in (base, cand)]
    parts = [statistics.variance(m) / len(m) for m in means]
    total = sum(parts)
    if total == 0:
        return center, center
    df = total**2 / sum(p**2 / (len(m) - 1) for p, m in zip(parts, means) if p)
    half = stats.t_975(df) * math.sqrt(total)
    return center - half, center + half


def difference(base: Groups, cand: Groups) -> tuple[float, float, float]:
    """Mean seconds per step, candidate minus baseline, and its 95% interval."""
    delta = fmean([v for g in cand for v in g]) - fmean([v for g in base for v in g])
    interval = stats.bootstrap([cand, base], lambda c, b: fmean(c) - fmean(b))
    if len(base) > 1 and len(cand) > 1:
        interval = stats.widest(interval, welch_difference(delta, base, cand))
    return delta, *interval


def groups(profiles: list[Profile], table: str, name: str, kernel: str | None = None) -> Groups:
    """One operator's (or one of its kernels') seconds per step in each worker, 0 in the
    steps of a worker that never ran it."""
    out = []
    for p in profiles:
        values = getattr(p, table).get(name)
        if kernel is not None:
            values = (values or {}).get(kernel)
        out.append(values or [0.0] * p.steps)
    return out


def presence(in_base: bool, in_cand: bool) -> str:
    """APPEARED where no baseline worker ran it, VANISHED where no candidate worker did."""
    if not in_base:
        return APPEARED
    return VANISHED if not in_cand else ""


def mean(g: Groups) -> float:
    return fmean([v for steps in g for v in steps])


def kernel_rows(base: list[Profile], cand: list[Profile], op: str, top: int) -> list[KernelDelta]:
    """The `top` kernels under `op` by |difference|, each with its interval."""
    names = dict.fromkeys(k for p in base + cand for k in p.kernels.get(op, {}))
    rows = []
    for name in names:
        b, c = groups(base, "kernels", op, name), groups(cand, "kernels", op, name)
        delta, low, high = difference(b, c)
        detail = next((p.details[name] for p in cand + base if name in p.details), "")
        has = presence(*(any(name in p.kernels.get(op, {}) for p in side) for side in (base, cand)))
        rows.append(KernelDelta(name, mean(b), mean(c), low, high, has, detail))
    rows.sort(key=lambda r: (-abs(r.delta), r.function))
    return rows[:top]


def parent_of(profiles: list[Profile], name: str) -> str | None:
    return next((p.parents.get(name) for p in profiles if name in p.parents), None)


def operator_row(
    base: list[Profile], cand: list[Profile], name: str, change: float, kernels: int
) -> OperatorDelta:
    b, c = groups(base, "operators", name), groups(cand, "operators", name)
    delta, low, high = difference(b, c)
    inclusive = (mean(groups(base, "inclusive", name)), mean(groups(cand, "inclusive", name)))
    return OperatorDelta(
        name,
        parent_of(cand, name) or parent_of(base, name),
        mean(b),
        mean(c),
        delta / change if change else 0.0,
        inclusive,
        kernel_rows(base, cand, name, kernels),
        low,
        high,
        presence(*(any(name in p.operators for p in side) for side in (base, cand))),
    )


def summed_row(name: str, base: Groups, cand: Groups, change: float) -> OperatorDelta:
    """A row of no one operator (SMALLER, REMAINDER, STEP), from its seconds per step."""
    delta, low, high = difference(base, cand)
    share = delta / change if change else 0.0
    return OperatorDelta(name, None, mean(base), mean(cand), share, (0.0, 0.0), [], low, high)


def rest(profiles: list[Profile], names: list[str], whole: bool) -> Groups:
    """Per worker, per step: the seconds of the operators `names`; with `whole`, the step's
    seconds less those of every operator (the remainder)."""
    out = []
    for p in profiles:
        summed = [
            sum(p.operators.get(n, [0.0] * p.steps)[i] for n in names) for i in range(p.steps)
        ]
        out.append([s - x for s, x in zip(p.step, summed)] if whole else summed)
    return out


def diff(
    base: list[Profile], cand: list[Profile], kernels: int = KERNELS
) -> tuple[OperatorDelta, list[OperatorDelta]]:
    """(the whole step's row, the rows): every operator above KEEP of the step on either
    side, the one that moved most first, then SMALLER (the rest of them, pooled), then
    REMAINDER. Each side: a list of its workers' profiles of one case, on one device."""
    if not base or not cand or len({p.device for p in base + cand}) != 1:
        raise ValueError("attribution needs profiles of one device on both sides")
    step = summed_row(STEP, [p.step for p in base], [p.step for p in cand], 0.0)
    change = step.delta
    names = list(dict.fromkeys(n for p in base + cand for n in p.operators))
    floor = KEEP * max(step.baseline, step.candidate)
    size = {n: max(mean(groups(s, "operators", n)) for s in (base, cand)) for n in names}
    kept = [n for n in names if size[n] >= floor]
    rows = [operator_row(base, cand, n, change, kernels) for n in kept]
    rows.sort(key=lambda r: (-abs(r.delta), r.operator))
    small = [n for n in names if n not in kept]
    if small:
        rows.append(summed_row(SMALLER, rest(base, small, False), rest(cand, small, False), change))
    rows.append(summed_row(REMAINDER, rest(base, names, True), rest(cand, names, True), change))
    return dataclasses.replace(step, share=1.0 if change else 0.0), rows


def explained(step: OperatorDelta, rows: list[OperatorDelta]) -> float:
    """The share of the step's change that the operators' differences add up to (1 - the
    remainder's share); 0 where the step did not change."""
    remainder = next(r for r in rows if r.operator == REMAINDER)
    return 1 - remainder.delta / step.delta if step.delta else 0.0


def attributed(judged: Judged, base: list[Profile], cand: list[Profile], top: int = TOP) -> Judged:
    """`judged` with its attribution: in `top`, the `top` operators that moved most and the
    remainder's row; in `figures['attribution']`, every row, the step's and what is explained."""
    step, rows = diff(base, cand)
    operators = [r for r in rows if r.operator not in (SMALLER, REMAINDER)]
    remainder = rows[-1]
    figures = {
        "unit": "seconds per step",
        "device": base[0].device,
        "profiled_steps": {
            "baseline": [p.steps for p in base],
            "candidate": [p.steps for p in cand],
        },
        "step": step.as_dict(),
        "explained": explained(step, rows),
        "rows": [r.as_dict() for r in rows],
        "traces": {
            "baseline": [p.trace for p in base if p.trace],
            "candidate": [p.trace for p in cand if p.trace],
        },
    }
    return dataclasses.replace(
        judged,
        top=(*operators[:top], remainder),
        figures={**judged.figures, "attribution": figures},
    )

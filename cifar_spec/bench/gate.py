"""The gate: this run against this hardware's stored baseline, one flow for both metrics.

A `Metric` says what differs between time and instructions: where the baseline lives, how
this run is measured and judged. On time, two checks, each ending in a verdict, never a
traceback (on instructions, the first alone, on counts: `counts.py`):

1. Step times against a baseline saved earlier on the same hardware (baselines
   are keyed by the hardware and the workers' torch threads, never by the
   software (`baselines.fingerprint`), so a new torch is compared with the one
   before it; the versions of both are shown). Runs are minutes apart, so each
   case's ratio new / baseline gets a 95% interval from a bootstrap over both
   runs' worker processes and rounds
   (`stats.ratio_of_medians`), and the verdict of `records.verdict` at the
   threshold. `compare` is the better tool when both environments exist at
   once: its rounds are interleaved, so drift between runs cannot enter.
2. Floors on each speed-up over the reference (eager) of the same run, a figure
   that holds across machines of a class: fail when the whole 95% interval lies
   below the floor, inconclusive when it straddles.

A baseline of time holds each step case's profiled rounds too (`profiled.PROFILED_STEPS`
steps under torch.profiler in each worker, after the timed rounds, read into per-step
aggregates: small, no trace). A case that regresses is profiled again in this run, and its
change attributed to operators and kernels against those (`attribution.attributed`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cifar_spec.bench import (
    attribution,
    baselines,
    cases,
    counts,
    machine,
    records,
    report,
    stats,
    suite,
)
from cifar_spec.bench.profiled import Profile
from cifar_spec.bench.progress import Progress
from cifar_spec.bench.records import INSTRUCTIONS, TIME, Case, Judged
from cifar_spec.files import prepare_output, write_json

# From the false-alarm rate: the same code gated against its own baseline 10 times on a
# quiet 2-core VM (benchmarks/RESULTS.md, 40 judged cases) gave one false regression, eager
# at batch 1, 1.45x [1.26, 1.68]: between runs minutes apart a CPU step moved by 0.79-1.45x,
# a change of the machine that no interval within a run can see. 30% is the first 5% step
# above every such interval's low end; it still catches a step twice as slow whose
# interval is as wide as most of these (+-20%). Finer changes are for `compare`, whose
# rounds interleave.
GATE_THRESHOLD = 0.30


@dataclass(frozen=True)
class Metric:
    """What the gate flow needs of one metric."""

    name: str  # records.TIME or records.INSTRUCTIONS
    info: dict  # the machine the workers measure on (`machine.describe`)
    path: Path  # this hardware's baseline of this metric
    devices: list[str]  # a baseline must hold a case on one of them
    measure: Callable[[], list[dict]]  # this run's rows
    threshold: float  # the default
    floors: dict = field(default_factory=dict)  # {device: floors}, time only
    flags: str = ""  # the flags that select this metric, for the fixes the gate suggests
    what: str = "for this hardware"  # the baseline, as a refusal names it
    # time only: each case's profiled rounds, one profile per worker (`profile_cases`)
    profile: Callable[[list[Case]], dict[Case, list[Profile]]] | None = None


def time_metric(
    storage: str,
    devices: list[str],
    floors_folder: str | None,
    measure: Callable[[], list[dict]],
    threads: int | None,
    profile: Callable[[list[Case]], dict[Case, list[Profile]]] | None = None,
) -> Metric:
    """The gate on step times: a baseline per hardware and torch threads per worker, and the
    floors of each device's kind (those shipped with the package unless a folder is given),
    loaded and checked here, before any work; `profile` gives the profiled rounds."""
    info = machine.describe(suite.worker_threads(threads))  # the workers', not this process's
    floors = {}
    for device in devices:
        kind = torch.device(device).type
        path = Path(floors_folder) / f"{kind}.json" if floors_folder else None
        floors[device] = baselines.load_floors(path or baselines.default_floors(kind))
    return Metric(
        TIME,
        info,
        baselines.baseline_path(Path(storage), info),
        devices,
        measure,
        GATE_THRESHOLD,
        floors,
        what=f"for this hardware ({baselines.fingerprint(info)})",
        profile=profile,
    )


def profile_cases(
    planned: list[Case], workers: int | None, threads: int | None, show: bool
) -> dict[Case, list[Profile]]:
    """Each step case's profiled rounds in fresh workers of this Python, after this run's
    timed rounds (never between them), one profile per worker. A loop's round is a whole
    epoch, too long to profile ten times: loops are left out."""
    steps = [case for case in planned if case.variant not in cases.LOOPS]
    out = {}
    with Progress(show) as bar:
        bar.expect(len(steps))
        with suite.Suite(workers=workers or records.WORKERS, threads=threads, progress=bar) as s:
            for case in steps:
                arms = s.arms(case)
                bar.doing(f"{case.name}: profiled steps in {report.plural(len(arms), 'worker')}")
                out[case] = [arm.profile() for arm in arms]
                s.drop(arms)
                bar.advance(case.name)
    return out


def with_profiles(rows: list[dict], profiles: dict[Case, list[Profile]]) -> list[dict]:
    """The rows to save as a baseline: each with its case's profiled rounds where it has them
    (per-step aggregates, small; never a trace)."""
    out = []
    for row in rows:
        held = profiles.get(Case.of(row))
        extra = {"profiles": [replace(p, trace=None).as_dict() for p in held]} if held else {}
        out.append({**row, **extra})
    return out


def attribute_regressions(
    judged: list[Judged], baseline_rows: list[dict], metric: Metric, say
) -> list[Judged]:
    """Each regression, attributed against the baseline's own profiled rounds from this run's
    (profiled now, after every timed round); one the baseline has none of is said so."""
    saved = {Case.of(r): r.get("profiles") for r in baseline_rows}
    regressed = [j.case for j in judged if j.verdict == records.REGRESSION]
    held = [c for c in regressed if saved.get(c)]
    for case in regressed:
        if not saved.get(case):
            say(
                f"note: {case.name} is not attributed: the baseline holds no profiled rounds of "
                "it (saved before they were, or a loop); save a new one with --save-baseline"
            )
    if not held or metric.profile is None:
        return judged
    now = metric.profile(held)
    return [
        attribution.attributed(j, [Profile.from_dict(p) for p in saved[j.case]], now[j.case])
        if j.case in now
        else j
        for j in judged
    ]


def count_metric(storage: str, measure: Callable[[], list[dict]]) -> Metric:
    """The gate on instruction counts: one baseline per CPU, counted at one thread."""
    info = machine.describe(1)  # counting workers run one thread
    return Metric(
        INSTRUCTIONS,
        info,
        baselines.count_baseline_path(Path(storage), info),
        ["cpu"],
        measure,
        counts.COUNT_THRESHOLD,
        flags="--metric instructions ",
        what="of counts for this CPU",
    )


def time_judge(baseline_rows: list[dict], rows: list[dict], threshold: float) -> list[Judged]:
    """Each case measured in both runs, its ratio new / baseline judged; cases in one run only
    are left out."""
    old = {Case.of(r): r for r in baseline_rows}
    judged = []
    for row in rows:
        before = old.get(Case.of(row))
        if before is None:
            continue
        ratio = stats.ratio_of_medians(before["step_times"], row["step_times"])
        verdict = records.verdict(ratio.low, ratio.high, threshold)
        base_median = statistics.median(v for g in before["step_times"] for v in g)
        judged.append(
            Judged(
                Case.of(row),
                TIME,
                verdict,
                ratio.median,
                ratio.low,
                ratio.high,
                base_median,
                row["seconds_per_step"],
                moved=verdict in (records.REGRESSION, records.IMPROVEMENT),
                figures={"estimates": {"ratio": ratio.as_dict()}},  # as compare's
            )
        )
    return judged


def count_judge(baseline_rows: list[dict], rows: list[dict], threshold: float) -> list[Judged]:
    """Each case counted in both runs, judged on its counts (`counts.judge`)."""
    old = {Case.of(r): r for r in baseline_rows}
    return [
        counts.judge(Case.of(r), counts.from_row(old[Case.of(r)]), counts.from_row(r), threshold)
        for r in rows
        if Case.of(r) in old
    ]


JUDGES = {TIME: time_judge, INSTRUCTIONS: count_judge}


def check_floors(rows: list[dict], floors: dict) -> tuple[list[str], list[str]]:
    """(failed, inconclusive): a speed-up's whole interval below its floor, or straddling it."""
    failed, unsure = [], []
    for row in rows:
        limits = floors.get(row["variant"], {}).get(str(row["batch"]), {})
        floor = limits.get("speedup")
        if floor is None or not row.get("speedup_ci"):
            continue
        low, high = row["speedup_ci"]
        note = f" ({row['speedup_ci_note']})" if row.get("speedup_ci_note") else ""
        text = (
            f"{row['device']} {row['variant']} batch {row['batch']}: speed-up "
            f"{row['speedup']:.2f}x [{low:.2f}, {high:.2f}]{note} against the floor {floor:g}"
        )
        if high < floor:
            failed.append(text)
        elif low < floor:
            unsure.append(text)
    return failed, unsure


def unmeasured_floors(rows: list[dict], floors: dict) -> list[str]:
    """Floors no row was measured for: a skipped variant, or a renamed one to look at."""
    measured = {(r["variant"], str(r["batch"])) for r in rows}
    return [
        f"{variant} batch {batch}"
        for variant, batches in floors.items()
        if not variant.startswith("_")
        for batch in batches
        if (variant, batch) not in measured
    ]


def outcome(judged: list, failed: list[str], unsure: list[str]) -> tuple[int, str]:
    """(exit code, the one closing line): 0 passed, 1 FAILED, 3 inconclusive (`records.exit_code`,
    a floor failed counting as a regression and one straddled as inconclusive)."""
    verdicts = [j.verdict for j in judged]
    code = records.exit_code(
        verdicts + [records.REGRESSION] * len(failed) + [records.INCONCLUSIVE] * len(unsure)
    )
    if code == 1:
        regressions = verdicts.count(records.REGRESSION)
        parts = [f"{regressions} regression(s)"] if regressions else []
        parts += [f"{len(failed)} speed-up(s) below the floor"] if failed else []
        return 1, f"gate: FAILED ({', '.join(parts)})"
    if not judged and not unsure:
        return 3, (
            "gate: inconclusive (no case of this run is in the baseline: nothing was judged; "
            "save a baseline of these cases with --save-baseline)"
        )
    if code == 3:
        unclear = verdicts.count(records.INCONCLUSIVE)
        parts = [f"{unclear} case(s) straddle the threshold"] if unclear else []
        parts += [f"{len(unsure)} speed-up(s) straddle the floor"] if unsure else []
        return 3, f"gate: inconclusive ({', '.join(parts)}; run again or use compare)"
    return 0, "gate: passed"


def run(metric: Metric, save: bool, json_path: str | None, threshold: float | None, say) -> int:
    """The gate: every file checked before any work, this run measured, then saved as the
    baseline or judged against it; the exit code of `outcome` (0 on a save)."""
    baseline = None
    if not save:
        baselines.require_baseline(metric.path, metric.what, metric.flags)
        baseline = baselines.load_baseline(metric.path, metric.name)
        baselines.check_covers(baseline, metric.path, metric.devices, metric.flags)
    for path in filter(None, (json_path, metric.path if save else None)):
        prepare_output(path)  # its folders made, a link refused, before the measurement
    rows = metric.measure()
    if json_path:
        data = {"machine_info": metric.info, "rows": rows}
        write_json(json_path, data)
    if save:
        if metric.profile:
            rows = with_profiles(rows, metric.profile([Case.of(r) for r in rows]))
        baselines.save_baseline(metric.path, metric.info, rows)
        of = " of counts" if metric.name == INSTRUCTIONS else ""
        say(
            f"gate: baseline{of} saved to {metric.path} ({report.plural(len(rows), 'case')}, "
            f"torch {metric.info['torch']})"
        )
        return 0
    return judge_run(
        metric, baseline, rows, metric.threshold if threshold is None else threshold, say
    )


def judge_run(metric: Metric, baseline: dict, rows: list[dict], threshold: float, say) -> int:
    """Judge a measured run against its baseline (and, on time, its floors), say why, end in
    one line; the exit code of `outcome`."""
    was = baseline.get("machine_info", {})
    say(
        f"baseline: torch {was.get('torch')}, saved on this hardware; "
        f"now: torch {metric.info['torch']}"
    )
    old = {Case.of(r) for r in baseline["rows"]}
    new = {Case.of(r) for r in rows}
    for case in sorted(old - new, key=lambda c: c.key):
        say(f"note: {case.name} is in the baseline but was not measured in this run")
    for case in sorted(new - old, key=lambda c: c.key):
        say(f"note: {case.name} is not in the baseline: not judged")
    judged = JUDGES[metric.name](baseline["rows"], rows, threshold)
    if metric.name == TIME:
        judged = attribute_regressions(judged, baseline["rows"], metric, say)
    for line in report.judged_table(judged, metric.name, threshold, ("baseline", "now")):
        say(line)
    failed, unsure = [], []
    for device, limits in metric.floors.items():
        mine = [r for r in rows if r["device"] == device]
        below, straddling = check_floors(mine, limits)
        failed, unsure = failed + below, unsure + straddling
        for name in unmeasured_floors(mine, limits):
            say(f"note: {device} floor for {name} not checked: no such case in this run")
    for text in failed:
        say(f"below the floor: {text}")
    for text in unsure:
        say(f"straddles the floor: {text}")
    code, line = outcome(judged, failed, unsure)
    say(line)
    return code

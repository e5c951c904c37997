"""The gate: this run's step times against this hardware's stored baseline, and the floors.

Two checks, each ending in a verdict, never a traceback:

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
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from cifar_spec.bench import counts, records, report, stats
from cifar_spec.bench.records import Case

# From the false-alarm rate: the same code gated against its own baseline 10 times on a
# quiet 2-core VM (benchmarks/RESULTS.md, 40 judged cases) gave one false regression, eager
# at batch 1, 1.45x [1.26, 1.68]: between runs minutes apart a CPU step moved by 0.79-1.45x,
# a change of the machine that no interval within a run can see. 30% is the first 5% step
# above every such interval's low end; it still catches a step twice as slow whose
# interval is as wide as most of these (+-20%). Finer changes are for `compare`, whose
# rounds interleave.
DEFAULT_THRESHOLD = 0.30


def case_key(row: dict) -> tuple:
    return row["device"], row["variant"], row["batch"]


@dataclass(frozen=True)
class Judged:
    """One case's ratio new / baseline and what it says."""

    key: tuple
    baseline: float  # seconds per step, median
    new: float
    ratio: stats.Estimate
    verdict: str


def judge_times(baseline_rows: list[dict], rows: list[dict], threshold: float) -> list[Judged]:
    """Each case measured in both runs, judged; cases in one run only are left out."""
    old = {case_key(r): r for r in baseline_rows}
    judged = []
    for row in rows:
        before = old.get(case_key(row))
        if before is None:
            continue
        ratio = stats.ratio_of_medians(before["step_times"], row["step_times"])
        base_median = statistics.median(v for g in before["step_times"] for v in g)
        judged.append(
            Judged(
                case_key(row),
                base_median,
                row["seconds_per_step"],
                ratio,
                records.verdict(ratio.low, ratio.high, threshold),
            )
        )
    return judged


def check_floors(rows: list[dict], floors: dict) -> tuple[list[str], list[str]]:
    """(failed, inconclusive): a speed-up's whole interval below its floor, or straddling it."""
    failed, unsure = [], []
    for row in rows:
        limits = floors.get(row["variant"], {}).get(str(row["batch"]), {})
        floor = limits.get("speedup")
        if floor is None or not row.get("speedup_ci"):
            continue
        low, high = row["speedup_ci"]
        text = (
            f"{row['device']} {row['variant']} batch {row['batch']}: speed-up "
            f"{row['speedup']:.2f}x [{low:.2f}, {high:.2f}] against the floor {floor:g}"
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


def judge_run(
    baseline: dict,
    info: dict,
    rows: list[dict],
    floors: dict,
    threshold: float,
    say: Callable[[str], None],
) -> int:
    """Judge a measured run against its baseline and floors, say why, end in one line; the
    exit code of `outcome`."""
    was = baseline.get("machine_info", {})
    say(f"baseline: torch {was.get('torch')}, saved on this hardware; now: torch {info['torch']}")
    judged = judge_times(baseline["rows"], rows, threshold)
    say(report.format_time_judged(judged))
    failed, unsure = [], []
    for device, limits in floors.items():
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


def judge_count_run(
    baseline: dict, info: dict, rows: list[dict], threshold: float, say: Callable[[str], None]
) -> int:
    """Each counted case against the baseline's, its top functions where it moved; one closing
    line; the exit code of `outcome`."""
    was = baseline.get("machine_info", {})
    say(f"baseline: torch {was.get('torch')}, saved on this hardware; now: torch {info['torch']}")
    old = {case_key(r): r for r in baseline["rows"]}
    for key in old.keys() - {case_key(r) for r in rows}:
        say(f"note: {' '.join(map(str, key))} is in the baseline but was not counted in this run")
    judged = []
    for row in rows:
        before = old.get(case_key(row))
        if before is None:
            say(f"note: {' '.join(map(str, case_key(row)))} is not in the baseline: not judged")
            continue
        judged.append(
            counts.judge(
                Case(*case_key(row)), counts.from_row(before), counts.from_row(row), threshold
            )
        )
    say(f"verdicts at +-{threshold:.1%} on " + report.LEGEND.replace("candidate", "now"))
    for line in report.header():
        say(line.replace("candidate", "      now"))
    for j in judged:
        for line in report.format_count_judged(j):
            say(line)
    code, line = outcome(judged, [], [])
    say(line)
    return code

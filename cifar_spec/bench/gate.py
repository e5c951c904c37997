"""The gate: this run's step times against this hardware's stored baseline, and the floors.

Two checks, each ending in a verdict, never a traceback:

1. Step times against a baseline saved earlier on the same hardware (baselines
   are keyed by hardware alone, CPU model and threads or GPU name and count, so
   a new torch is compared with the one before it; the versions of both are
   shown). Runs are minutes apart, so each case's ratio new / baseline gets a
   95% interval from a bootstrap over both runs' worker processes and rounds
   (`stats.ratio_of_medians`), and the verdict of `stats.verdict` at the
   threshold. `compare` is the better tool when both environments exist at
   once: its rounds are interleaved, so drift between runs cannot enter.
2. Floors on each speed-up over the baseline variant of the same run, a figure
   that holds across machines of a class: fail when the whole 95% interval lies
   below the floor, inconclusive when it straddles.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cifar_spec.bench import stats
from cifar_spec.files import parse_json, read_untrusted

# From the false-alarm rate: the same code gated against its own baseline 10 times on a
# quiet 2-core VM (benchmarks/RESULTS.md, 40 judged cases) gave one false regression, eager
# at batch 1, 1.45x [1.26, 1.68]: between runs minutes apart a CPU step moved by 0.79-1.45x,
# a change of the machine that no interval within a run can see. 30% is the first 5% step
# above every such interval's low end; it still catches a step twice as slow whose
# interval is as wide as most of these (+-20%). Finer changes are for `compare`, whose
# rounds interleave.
DEFAULT_THRESHOLD = 0.30
BASELINE_FILE = "baseline.json"
JSON_LIMIT = 16 << 20  # bytes in a baseline or floors file; a full baseline is under 100 kB


class GateError(ValueError):
    """A baseline or floors file that cannot be used; the message names the file and the fix."""


def fingerprint(info: dict) -> str:
    """A folder name for baselines: the same on the same hardware, whatever the software."""
    if info.get("gpu_name"):
        text = f"{info['gpu_name']}-x{info.get('gpu_count', 1)}"
    else:
        text = f"{info['cpu_model']}-{info['torch_threads']}t"
    return re.sub(r"[^A-Za-z0-9.-]", "_", text)


def baseline_path(storage: Path, info: dict) -> Path:
    return Path(storage) / fingerprint(info) / BASELINE_FILE


def load_json(path: Path, what: str) -> object:
    try:
        raw = read_untrusted(path, JSON_LIMIT, f"a {what}")
    except FileNotFoundError:
        raise GateError(f"no {what} at {path}") from None
    except OSError as error:
        raise GateError(f"cannot read the {what} {path}: {error.strerror}") from None
    try:
        return parse_json(raw, path, f"a {what}")
    except ValueError as error:
        raise GateError(f"{error}; fix or delete the {what}") from None


def load_baseline(path: Path) -> dict:
    """A saved baseline, checked: each row names its case and holds step times per worker."""
    data = load_json(path, "baseline")
    fix = "delete it and save a new one with `cifar-spec gate --save-baseline`"
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise GateError(f"{path} is not a cifar-spec baseline (no list of rows); {fix}")
    for i, row in enumerate(data["rows"]):
        times = row.get("step_times") if isinstance(row, dict) else None
        ok = (
            isinstance(row, dict)
            and all(
                isinstance(row.get(k), t)
                for k, t in (("device", str), ("variant", str), ("batch", int))
            )
            and isinstance(times, list)
            and times
            and all(isinstance(g, list) and g and all(_positive(v) for v in g) for g in times)
        )
        if not ok:
            raise GateError(
                f"{path}: row {i} is not a measured case (device, variant, batch "
                f"and positive step_times per worker); {fix}"
            )
    return data


def check_covers(data: dict, path: Path, devices: list[str], flags: str = "") -> None:
    """Before any work: a baseline with no case on the devices this run measures would judge
    nothing, and a gate that judges nothing must not seem to pass."""
    held = sorted({row["device"] for row in data["rows"]})
    if not set(held) & set(devices):
        holds = f"cases on {', '.join(held)} only" if held else "no cases at all"
        raise GateError(
            f"the baseline {path} holds {holds}, none on {', '.join(devices)}: it could judge "
            f"nothing; save one here with `cifar-spec gate {flags}--save-baseline`"
        )


def _positive(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def save_baseline(path: Path, info: dict, rows: list[dict]) -> None:
    """Write the baseline whole or not at all, never through a planted link."""
    from cifar_spec.files import write_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({"machine_info": info, "rows": rows}, indent=1).encode())


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
                stats.verdict(ratio, threshold),
            )
        )
    return judged


# Floors: {"_note": "...", variant: {batch: {"speedup": floor}}}, per device.


def default_floors(device: str) -> Path:
    """The floors shipped with the package (benchmarks/floors in a checkout links here)."""
    return Path(str(resources.files("cifar_spec.bench") / "floors" / f"{device}.json"))


def load_floors(path: Path) -> dict:
    """Floors, checked key by key: every floor a finite number, every level an object."""
    data = load_json(path, "floors file")
    if not isinstance(data, dict):
        raise GateError(f"{path}: the floors must be an object of variants")
    for variant, batches in data.items():
        if variant.startswith("_"):
            continue  # a note
        if not isinstance(batches, dict):
            raise GateError(
                f"{path}: {variant!r} must be an object of batch sizes, "
                f"got {type(batches).__name__}"
            )
        for batch, limits in batches.items():
            where = f"{variant!r} batch {batch!r}"
            if not batch.isdigit():
                raise GateError(f"{path}: {where}: a batch size must be a whole number")
            if not isinstance(limits, dict):
                raise GateError(
                    f"{path}: {where} must be an object of figures, got {type(limits).__name__}"
                )
            for figure, floor in limits.items():
                if figure != "speedup":
                    raise GateError(
                        f"{path}: {where}: unknown figure {figure!r}; floors hold 'speedup' only"
                    )
                if not _positive(floor):
                    raise GateError(
                        f"{path}: {where} {figure}: the floor must be a positive "
                        f"finite number, got {floor!r}"
                    )
    return data


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


def format_judged(judged: list[Judged]) -> str:
    lines = [f"{'case':<58} {'baseline':>10} {'now':>10} {'now/baseline [95% CI]':>26}  verdict"]
    for j in judged:
        name = " ".join(map(str, j.key))
        lines.append(
            f"{name:<58} {j.baseline * 1e3:>8.3f}ms {j.new * 1e3:>8.3f}ms "
            f"{j.ratio.median:>9.3f} [{j.ratio.low:.3f}, {j.ratio.high:.3f}]  {j.verdict}"
        )
    return "\n".join(lines)


def outcome(judged: list[Judged], failed: list[str], unsure: list[str]) -> tuple[int, str]:
    """(exit code, the one closing line): 0 passed, 1 FAILED, 3 inconclusive."""
    regressions = [j for j in judged if j.verdict == stats.REGRESSION]
    unclear = [j for j in judged if j.verdict == stats.INCONCLUSIVE]
    if regressions or failed:
        parts = [f"{len(regressions)} regression(s)"] if regressions else []
        parts += [f"{len(failed)} speed-up(s) below the floor"] if failed else []
        return 1, f"gate: FAILED ({', '.join(parts)})"
    if not judged and not failed and not unsure:
        return 3, (
            "gate: inconclusive (no case of this run is in the baseline: nothing was judged; "
            "save a baseline of these cases with --save-baseline)"
        )
    if unclear or unsure:
        parts = [f"{len(unclear)} case(s) straddle the threshold"] if unclear else []
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
    say(format_judged(judged))
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


# Instruction counts (`--metric instructions`): a baseline of counts, judged exactly.

COUNT_BASELINE_FILE = "instructions.json"


def count_baseline_path(storage: Path, info: dict) -> Path:
    """Counts are taken on the CPU at one thread: the folder is the CPU's, with 1 thread, on a
    machine with a GPU too."""
    cpu = {"cpu_model": info["cpu_model"], "torch_threads": 1}
    return Path(storage) / fingerprint(cpu) / COUNT_BASELINE_FILE


def load_count_baseline(path: Path) -> dict:
    """A saved baseline of counts, checked row by row."""
    data = load_json(path, "baseline")
    fix = (
        "delete it and save a new one with `cifar-spec gate --metric instructions --save-baseline`"
    )
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise GateError(f"{path} is not a cifar-spec baseline (no list of rows); {fix}")
    for i, row in enumerate(data["rows"]):
        values = row.get("instructions_per_step") if isinstance(row, dict) else None
        functions = row.get("functions") if isinstance(row, dict) else None
        ok = (
            isinstance(row, dict)
            and all(
                isinstance(row.get(k), t)
                for k, t in (("device", str), ("variant", str), ("batch", int))
            )
            and isinstance(values, list)
            and values
            and all(_positive(v) for v in values)
            and isinstance(functions, dict)
            and all(isinstance(k, str) and _positive(v) for k, v in functions.items())
        )
        if not ok:
            raise GateError(
                f"{path}: row {i} is not a counted case (device, variant, batch, positive "
                f"instructions_per_step per process and functions); {fix}"
            )
    return data


def judge_count_run(
    baseline: dict, info: dict, rows: list[dict], threshold: float, say: Callable[[str], None]
) -> int:
    """Each counted case against the baseline's, its top functions where it moved; one closing
    line; the exit code of `outcome`."""
    from cifar_spec.bench import count
    from cifar_spec.bench.paired import Case

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
            count.judge(
                Case(*case_key(row)), count.from_row(before), count.from_row(row), threshold
            )
        )
    say(f"verdicts at +-{threshold:.1%} on " + count.LEGEND.replace("candidate", "now"))
    for line in count.header():
        say(line.replace("candidate", "      now"))
    for j in judged:
        for line in count.format_judged(j):
            say(line)
    code, line = outcome(judged, [], [])
    say(line)
    return code

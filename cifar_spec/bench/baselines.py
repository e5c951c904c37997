"""The gate's stored files: baselines (of times or of counts) and floors, loaded, checked, saved.

A baseline is a run saved on one machine, keyed by its hardware (`fingerprint`), for
later runs there to be judged against; floors are the speed-ups each variant must keep
on a class of machine, shipped with the package. Every one is read as an untrusted file
(`files.read_untrusted`, `files.parse_json`) and checked row by row before any work.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

from cifar_spec.bench.profiled import profile_problem
from cifar_spec.errors import GateError
from cifar_spec.files import parse_json, read_untrusted, write_json

BASELINE_FILE = "baseline.json"
COUNT_BASELINE_FILE = "instructions.json"
JSON_LIMIT = 16 << 20  # bytes in a baseline or floors file; a full baseline is under 100 kB


def fingerprint(info: dict) -> str:
    """A folder name for baselines: the same on the same hardware at the same torch threads per
    worker (`machine.describe`), whatever the software. A run at one thread and one on every
    core never share a folder: their CPU times are not one measurement."""
    if info.get("gpu_name"):
        text = f"{info['gpu_name']}-x{info.get('gpu_count', 1)}-{info['threads']}t"
    else:
        text = f"{info['cpu_model']}-{info['threads']}t"
    return re.sub(r"[^A-Za-z0-9.-]", "_", text)


def baseline_path(storage: Path, info: dict) -> Path:
    return Path(storage) / fingerprint(info) / BASELINE_FILE


def count_baseline_path(storage: Path, info: dict) -> Path:
    """Counts are taken on the CPU at one thread: the folder is the CPU's, with 1 thread, on a
    machine with a GPU too."""
    cpu = {"cpu_model": info["cpu_model"], "threads": 1}
    return Path(storage) / fingerprint(cpu) / COUNT_BASELINE_FILE


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


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: object) -> bool:
    return _finite(value) and value > 0


def step_times_fit(row: dict) -> bool:
    times = row.get("step_times")
    return (
        isinstance(times, list)
        and bool(times)
        and all(isinstance(g, list) and g and all(_positive(v) for v in g) for g in times)
    )


def profiles_fit(row: dict) -> bool:
    """A row's profiled rounds (`profiled.Profile.as_dict`, one per worker, no trace), or none
    (a row saved before they were, or a loop's): each a profile of the row's device kind."""
    saved = row.get("profiles")
    if saved is None:
        return True
    kind = str(row["device"]).split(":")[0]
    return (
        isinstance(saved, list)
        and bool(saved)
        and all(
            profile_problem(p) is None and p["device"] == kind and p["trace"] is None for p in saved
        )
    )


def time_row_fits(row: dict) -> bool:
    return step_times_fit(row) and profiles_fit(row)


def counts_fit(row: dict) -> bool:
    values, functions = row.get("instructions_per_step"), row.get("functions")
    allocator = row.get("allocator_per_step")
    return (
        isinstance(values, list)
        and bool(values)
        and all(_positive(v) for v in values)
        and (
            allocator is None  # a row saved before the allocators were set apart
            or isinstance(allocator, list)
            and len(allocator) == len(values)
            and all(_finite(a) and 0 <= a < v for a, v in zip(allocator, values))
        )
        and isinstance(functions, dict)
        and all(isinstance(k, str) and _positive(v) for k, v in functions.items())
        and operators_fit(row.get("operators", {}))
    )


def operators_fit(saved: object) -> bool:
    """A row's operators (`operators.Operator.as_dict`, by name), or none (a row saved before
    operators were read): each field of its type, every figure finite."""
    fields = {"name", "inclusive", "own", "parent", "parent_share", "kernels"}
    return isinstance(saved, dict) and all(
        isinstance(name, str)
        and isinstance(op, dict)
        and set(op) == fields
        and op["name"] == name
        and all(_finite(op[k]) for k in ("inclusive", "own", "parent_share"))
        and isinstance(op["parent"], (str, type(None)))
        and isinstance(op["kernels"], dict)
        and all(isinstance(k, str) and _finite(v) for k, v in op["kernels"].items())
        for name, op in saved.items()
    )


# Per metric: what a row must hold beyond its case, how a refusal names it, and the flags
# that save a new baseline of that metric.
ROWS = {
    "time": (
        time_row_fits,
        "a measured case (device, variant, batch, positive step_times per worker, and its "
        "profiled steps where saved)",
        "",
    ),
    "instructions": (
        counts_fit,
        "a counted case (device, variant, batch, positive instructions_per_step per process, "
        "functions, and operators where saved)",
        "--metric instructions ",
    ),
}


def load_baseline(path: Path, metric: str = "time") -> dict:
    """A saved baseline of `metric`, checked: each row names its case and holds its figures."""
    data = load_json(path, "baseline")
    fits, what, flags = ROWS[metric]
    fix = f"delete it and save a new one with `cifar-spec gate {flags}--save-baseline`"
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise GateError(f"{path} is not a cifar-spec baseline (no list of rows); {fix}")
    for i, row in enumerate(data["rows"]):
        ok = (
            isinstance(row, dict)
            and all(
                isinstance(row.get(k), t)
                for k, t in (("device", str), ("variant", str), ("batch", int))
            )
            and fits(row)
        )
        if not ok:
            raise GateError(f"{path}: row {i} is not {what}; {fix}")
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


def save_baseline(path: Path, info: dict, rows: list[dict]) -> None:
    """Write the baseline whole or not at all, never through a planted link."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"machine_info": info, "rows": rows})


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


def require_baseline(path: Path, what: str, flags: str) -> None:
    """A missing baseline is refused before any work, saying how to make one."""
    if not path.exists():
        raise GateError(
            f"no baseline {what} at {path}; make one on this machine with `cifar-spec gate "
            f"{flags}--save-baseline` (or restore that folder from an earlier run's artifacts)"
        )

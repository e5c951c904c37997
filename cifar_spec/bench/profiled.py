"""Profiled rounds: a case's steps run under torch.profiler, after its timed rounds, read
into small aggregates per step, never a trace.

The verdict on time comes from rounds without a profiler (`measure.time_round`): a profiler
adds its own cost to every operator it records, so its steps are slower and are never timed
for a verdict. What profiled steps are for is the question a verdict leaves: which operator
or kernel took the time that moved (`attribution.py` diffs them).

Per step, each in a `record_function` mark of its own (events are given to the step whose
mark they start in, on any thread: the autograd engine runs a GPU's backward on a thread of
its own):

- on the CPU, the self time of each operator (its time minus that of the events nested in
  it), the inclusive time of each, and the operator it ran under;
- on CUDA, the device time of each kernel (or copy), under the operator that launched it
  (the innermost operator around the launch, linked by the profiler's correlation id); a
  device event that no operator launched (a CUDA graph's replay) is under OUTSIDE. An
  operator's own time is that of the kernels it launched; its inclusive time adds the
  kernels of the operators nested in it. A `record_function`'s span on the device's
  timeline (the step's mark, the optimizer's) is not work of its own, and is left out.

Each step's time is measured around it as the timed rounds measure (`time_round`, one step,
the device synchronized): by the host clock on the CPU, by CUDA events on a GPU. What the
operators leave of it (Python between operators, launch gaps, idle device) is the
remainder `attribution.py` shows as its own row.

Kernel names are normalised (`kernel_name`) so that the same kernel matches across two torch
builds: the name is the kernel's own qualified name; template arguments and suffixes that a
build or a launch adds (Triton's kernel index, a clone's mark) are kept apart, beside it.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
from torch.autograd import DeviceType

from cifar_spec.bench import measure
from cifar_spec.bench.operators import flatten
from cifar_spec.files import write_atomically

STEP_MARK = "cifar_spec.profiled_step"  # a record_function around each profiled step


PROFILED_STEPS = 10  # per worker: enough steps to see each worker's own spread


OUTSIDE = "(no operator)"  # device work that no profiled operator launched


# Calls into the CUDA (or HIP) runtime and driver, recorded as CPU events beside the
# operators. None is an operator: kernels are linked to the operator around their launch,
# not to the launch call. Their ids are the device API's correlation ids, counted apart
# from the operators' ids, so one may equal an operator's (pytorch/pytorch#124388).
RUNTIME_CALL = re.compile(r"^(cuda|cu|hip|hsa)[A-Z]")


@dataclass(frozen=True)
class KernelName:
    """A device kernel's name cut into what matches across builds (`name`) and what does not:
    its template arguments and a suffix a build or launch adds."""

    name: str
    template: str = ""  # the arguments between the outermost <>, as the profiler wrote them
    suffix: str = ""  # Triton's kernel index, a clone's or a code object's mark

    @property
    def detail(self) -> str:
        """What was kept apart, to print beside the name: `<float, float> [suffix 3]`."""
        parts = [f"<{self.template}>"] if self.template else []
        return " ".join(parts + ([f"[suffix {self.suffix}]"] if self.suffix else []))


# Names of device work that are not C++ signatures: kept whole.
NOT_SIGNATURES = ("Memcpy", "Memset", "cudaMemcpy", "cudaMemset")


# The kernels of Triton (torch.compile's inductor) end in an index that numbers them within
# one compiled graph: another build, or another graph, numbers the same kernel otherwise.
TRITON_INDEX = re.compile(r"^(triton_\w+?)_(\d+)$")


MARK = re.compile(r"\x00(\d+)\x00")  # where `operators.flatten` took out a bracketed group


CLONE = re.compile(r"\s*\[clone ([^\]]*)\]")


# Wrappers whose template argument is the kernel itself (CUTLASS's launch shims): the name is
# the wrapper with that argument's own name, or every CUTLASS kernel would match every other.
WRAPPERS = {"cutlass::Kernel", "cutlass::Kernel2", "cutlass::device_kernel"}


def kernel_name(raw: str) -> KernelName:
    """`void at::native::(anonymous namespace)::max_pool_forward_nchw<float, float>(int, ...)`
    -> name `at::native::max_pool_forward_nchw`, template `float, float`; the parameter list,
    which follows from the template, and the return type are dropped."""
    text = raw.strip()
    if text.startswith(NOT_SIGNATURES):
        return KernelName(text)
    suffixes = CLONE.findall(text)
    text = CLONE.sub("", text).replace("(anonymous namespace)::", "")
    if text.endswith(".kd"):  # a ROCm code object's mark
        text, suffixes = text[:-3], [*suffixes, "kd"]
    triton = TRITON_INDEX.match(text)
    if triton:
        return KernelName(triton.group(1), "", " ".join([triton.group(2), *suffixes]))
    top, groups = flatten(text)
    words = top.split() or [text]
    marks = [int(m) for m in MARK.findall(words[-1])]
    name = MARK.sub("", words[-1]) or text
    templates = [groups[i][1:-1].strip() for i in marks if groups[i].startswith("<")]
    template = "; ".join(templates)
    if name in WRAPPERS and templates:
        inner, _ = flatten(templates[0])
        name = f"{name}<{MARK.sub('', inner).strip()}>"
    return KernelName(name, template, " ".join(suffixes))


Steps = list[float]  # seconds in each profiled step, one value per step


@dataclass(frozen=True)
class Profile:
    """One worker's profiled steps of one case: per step, the seconds of each operator and,
    on CUDA, of each kernel under the operator that launched it. Small: no events, no trace.
    Every list of seconds has one value per step (0 where a step did not run it)."""

    device: str  # "cpu": operators' self CPU time; "cuda": their kernels' device time
    step: Steps  # each step: host clock on the CPU, CUDA events on a GPU
    operators: dict[str, Steps]  # own time: self CPU time, or its own kernels' device time
    inclusive: dict[str, Steps] = field(default_factory=dict)  # with the operators nested in it
    parents: dict[str, str | None] = field(default_factory=dict)  # ran under, most often
    kernels: dict[str, dict[str, Steps]] = field(default_factory=dict)  # operator -> kernel
    details: dict[str, str] = field(default_factory=dict)  # kernel -> `KernelName.detail`
    trace: str | None = None  # where the chrome trace of these steps was written, if asked

    @property
    def steps(self) -> int:
        return len(self.step)

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "step": self.step,
            "operators": self.operators,
            "inclusive": self.inclusive,
            "parents": self.parents,
            "kernels": self.kernels,
            "details": self.details,
            "trace": self.trace,
        }

    @classmethod
    def from_dict(cls, data: object) -> Profile:
        """A profile from a worker's reply or a saved baseline; ValueError naming what is
        wrong where it is not one (a reply or a file is not trusted)."""
        problem = profile_problem(data)
        if problem:
            raise ValueError(f"not a profile of steps: {problem}")
        return cls(**data)


def is_steps(value: object, steps: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == steps
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) and v >= 0 for v in value)
    )


def profile_problem(data: object) -> str | None:
    """What keeps `data` from being a `Profile.as_dict()`, or None."""
    fields = {"device", "step", "operators", "inclusive", "parents", "kernels", "details", "trace"}
    if not isinstance(data, dict) or set(data) != fields:
        return f"fields {sorted(data) if isinstance(data, dict) else type(data).__name__}"
    if data["device"] not in ("cpu", "cuda") or not is_steps(data["step"], len(data["step"])):
        return "its device, or its steps' seconds"
    maps = [data[name] for name in ("operators", "inclusive", "parents", "kernels", "details")]
    if not data["step"] or not all(isinstance(m, dict) for m in maps):
        return "no steps, or a table that is not one"
    n = len(data["step"])
    tables = [data["operators"], data["inclusive"], *data["kernels"].values()]
    for table in tables:
        if not isinstance(table, dict) or not all(is_steps(v, n) for v in table.values()):
            return f"seconds that are not {n} per step"
    texts = [*data["parents"].values(), *data["details"].values(), data["trace"]]
    if not all(isinstance(t, (str, type(None))) for t in texts):
        return "a parent, detail or trace that is not text"
    return None


class StepOf:
    """Which profiled step a moment (µs, the profiler's clock) falls in, by the step marks."""

    def __init__(self, marks: list) -> None:
        marks = sorted(marks, key=lambda m: m.time_range.start)
        self.starts = [m.time_range.start for m in marks]
        self.ends = [m.time_range.end for m in marks]

    def __call__(self, moment: float) -> int | None:
        i = bisect.bisect_right(self.starts, moment) - 1
        return i if i >= 0 and moment <= self.ends[i] else None


def is_mark(event) -> bool:
    return event.name.startswith(STEP_MARK)


def enclosing(event) -> list[str]:
    """The names of the events around `event` on its thread, innermost first, up to its
    step's mark."""
    names = []
    parent = event.cpu_parent
    while parent is not None and not is_mark(parent):
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def per_step(n: int) -> defaultdict:
    return defaultdict(lambda: [0.0] * n)


def most_often(seen: dict[str, Counter]) -> dict[str, str | None]:
    return {name: counts.most_common(1)[0][0] for name, counts in seen.items()}


def device_links(profiler: torch.profiler.profile) -> dict[int, int]:
    """Each device event's correlation id -> the id of the operator that launched it (0:
    none), as the profiler's raw results link them: torch's own events carry the link only
    in releases after 2.11, the profiler's results in each."""
    results = profiler.profiler.kineto_results
    return {  # a span's id may come from another count: left out, so none overwrites a kernel's
        e.correlation_id(): e.linked_correlation_id()
        for e in results.events()
        if e.device_type() != DeviceType.CPU and not e.is_user_annotation()
    }


def aggregate(
    events: Iterable, step: Steps, device: str, links: dict[int, int] | None = None
) -> Profile:
    """A profile from the profiler's events (`profile.events()`, the tree of CPU events
    built) of steps each in a STEP_MARK, and the steps' own seconds, in order; on CUDA,
    `links` (`device_links`) names the operator that launched each device event."""
    events = list(events)
    cpu = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    marks = [e for e in cpu if is_mark(e)]
    if len(marks) != len(step):
        raise RuntimeError(f"{len(marks)} step marks among the events, for {len(step)} steps")
    step_of = StepOf(marks)
    if device == "cpu":
        return cpu_profile(cpu, step_of, step)
    device_events = [e for e in events if e.device_type != DeviceType.CPU]
    return device_profile(device_events, cpu, step_of, step, links or {})


def cpu_profile(cpu: list, step_of: StepOf, step: Steps) -> Profile:
    """Each operator's self and inclusive CPU time per step (an operator nested in itself
    counted once in its inclusive), and the event it ran under most often."""
    own, inclusive, parents = per_step(len(step)), per_step(len(step)), defaultdict(Counter)
    for event in cpu:
        i = None if is_mark(event) else step_of(event.time_range.start)
        if i is None:
            continue
        around = enclosing(event)
        own[event.name][i] += event.self_cpu_time_total * 1e-6
        if event.name not in around:
            inclusive[event.name][i] += event.cpu_time_total * 1e-6
        parents[event.name][around[0] if around else None] += 1
    return Profile("cpu", list(step), dict(own), dict(inclusive), most_often(parents))


def is_operator(event) -> bool:
    """Whether a CPU event may have launched device work: not a `record_function` span (a
    step's mark among them) and not a call into the runtime (RUNTIME_CALL)."""
    return not (event.is_user_annotation or RUNTIME_CALL.match(event.name))


def device_profile(
    device_events: list, cpu: list, step_of: StepOf, step: Steps, links: dict[int, int]
) -> Profile:
    """Each kernel's device time per step under the operator that launched it (`links`: a
    device event's id -> its operator's `id`); an operator's own time is its kernels', its
    inclusive adds its nested operators'."""
    n = len(step)
    launched_by = {e.id: e for e in cpu if is_operator(e)}
    own, inclusive, parents = per_step(n), per_step(n), defaultdict(Counter)
    kernels: dict = defaultdict(lambda: per_step(n))
    details: dict[str, str] = {}
    for event in device_events:
        if event.is_user_annotation:  # a record_function's span on the device: no work
            continue
        link = links.get(event.id, 0)
        op = launched_by.get(link) if link else None  # 0: launched by no operator
        i = step_of((op or event).time_range.start)
        if i is None:
            continue
        seconds = (event.time_range.end - event.time_range.start) * 1e-6
        name, around = (op.name, enclosing(op)) if op else (OUTSIDE, [])
        kernel = kernel_name(event.name)
        kernels[name][kernel.name][i] += seconds
        details.setdefault(kernel.name, kernel.detail)
        own[name][i] += seconds
        for holder in dict.fromkeys([name, *around]):
            inclusive[holder][i] += seconds
        parents[name][around[0] if around else None] += 1
    return Profile(
        "cuda",
        list(step),
        dict(own),
        dict(inclusive),
        most_often(parents),
        {op: dict(k) for op, k in kernels.items()},
        details,
    )


def export_trace(profiler: torch.profiler.profile, path: str) -> str:
    """The profiled steps' chrome trace (Perfetto and TensorBoard open it) written to `path`
    the project's one way (atomic, link-safe); the profiler can only write a path itself."""
    with tempfile.TemporaryDirectory(prefix="cifar-spec-trace-") as folder:
        raw = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(raw)
        with open(raw, "rb") as trace:
            write_atomically(path, lambda out: out.write(trace.read()))
    return path


def profile_steps(
    step: Callable[[], object],
    device: torch.device,
    steps: int = PROFILED_STEPS,
    trace: str | None = None,
) -> Profile:
    """`steps` steps under torch.profiler, each timed as a round of one step is and marked;
    with `trace`, their chrome trace written there. Never part of a timed round."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    seconds = []
    with torch.profiler.profile(activities=activities) as profiler:
        step()  # the profiler's own start-up lands in this step, which no mark holds
        measure.synchronize(device)
        for i in range(steps):
            with torch.profiler.record_function(f"{STEP_MARK}#{i}"):
                timed = measure.time_round(step, device, 1)
            seconds.append(timed.gpu if timed.gpu is not None else timed.host)
    links = device_links(profiler) if device.type == "cuda" else None
    profile = aggregate(profiler.events(), seconds, device.type, links)
    return replace(profile, trace=export_trace(profiler, trace)) if trace else profile

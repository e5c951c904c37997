"""Instruction counts of a training step under callgrind: the CPU metric that no load can move.

This module runs the counting workers and reads what callgrind wrote; `counts.py` judges.

Wall time on a shared 2-core runner moves by 8-14% between compares of one
environment against itself; the instructions a step executes do not depend on
what else the machine does. A *counting worker* is a worker (`worker.py`)
started under valgrind's callgrind with instrumentation off, one thread. It
imports torch, builds and warms up every case at valgrind's plain speed, then
switches instrumentation on (`callgrind_control`) and, per case, runs one step
uncounted and `steps` steps with collection toggled on around them by torch's
own client requests, each case in a dump of its own. Several cases share one
worker, so a compare of four cases pays four starts, not sixteen.

What is counted, and what is not (docs/instruction-counts.md and `--help` point here):

- valgrind 3.19 emulates the CPU: it hides AVX-512 from the program (the AVX2
  path is counted), and it emulates each lane of an FMA instruction in a helper
  call, which made a batch-64 step take 85 s instead of 0.04 s. So counting
  workers cap oneDNN at AVX and oneMKL at SSE4.2 (`COUNT_ENV`): their FMA-free
  kernels are what is counted, at about 1 s a batch-64 step. Counts compare
  builds with each other; they are not the instructions of the AVX-512 path
  that runs outside valgrind.
- One thread: a threading change is invisible, and so are cache misses and
  memory bandwidth, unless `cache_sim` asks for callgrind's cache simulation
  (an estimated-cycles figure, Ir + 10 L1 misses + 100 last-level misses,
  callgrind's own weights; 2-3x slower).
- The same process history counts the same: PYTHONHASHSEED is fixed, so that
  two fresh processes of one environment agree (measured: to the instruction).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cifar_spec.bench import machine, operators
from cifar_spec.bench._handle import BUILD_TIMEOUT, Expected, Worker, kill_group
from cifar_spec.bench.records import Case
from cifar_spec.errors import CountError, WorkerError

TOOLS = ("valgrind", "callgrind_control", "callgrind_annotate")


INSTALL = "sudo apt-get install valgrind (Debian, Ubuntu; valgrind elsewhere)"


COUNT_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX",  # oneDNN's kernels without FMA, which valgrind emulates slowly
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",  # the same for oneMKL (it has no AVX-only path)
    "PYTHONHASHSEED": "0",  # sets and dicts of str iterate in one order in every process
    "OMP_NUM_THREADS": "1",
}


COUNT_HELLO_TIMEOUT = 900.0  # importing torch under valgrind: ~30 s alone, minutes beside others


COUNT_TIMEOUT = 900.0


WARM_UP = 3  # steps, a fixed number (see worker.build); the kernels are chosen by the second


IMAGES_PER_COUNT = 8  # steps counted per case: 8 at batch 1, one at batch 8 and above


# Children a counting worker starts run natively; a wrapper script's exec of Python does not.
NATIVE_CHILDREN = "*/git,*/callgrind_control,*/perl,*/uname,*/ldconfig*"


JIT = "JIT code"


def check_tools() -> None:
    """Refuse, before any work, a machine without valgrind's callgrind."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise CountError(
            f"{', '.join(missing)} not on PATH: counting instructions runs the steps under "
            f"valgrind's callgrind; install it with `{INSTALL}`"
        )


def check_countable(device: str) -> None:
    if device != "cpu":
        raise CountError(
            f"--metric instructions counts on the CPU only: valgrind cannot run CUDA code "
            f"(it emulates the CPU, not the GPU's driver); use --metric time on {device}"
        )


def steps_for(batch: int) -> int:
    return max(1, IMAGES_PER_COUNT // batch)


def callgrind_command(out_file: Path, cache_sim: bool) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--collect-atstart=no",
        f"--cache-sim={'yes' if cache_sim else 'no'}",
        "--trace-children=yes",  # a wrapper script that execs Python is followed into it
        f"--trace-children-skip={NATIVE_CHILDREN}",
        f"--callgrind-out-file={out_file}",
        "--log-fd=2",
    ]


# The C and Python allocators' own functions (glibc's malloc, CPython's pymalloc). What a step
# spends in them depends on the state its process's history left their free lists in, not on
# the step alone: fresh processes of one environment differ there by up to 0.06% of a batch-1
# step, and nowhere else by more than 0.003% (docs/instruction-counts.md). A verdict sets them
# apart (`counts.judged_values`); the calls into them are still counted in their callers.
ALLOCATOR = re.compile(
    r"_int_\w+|malloc\w*|c?free|calloc|realloc|posix_memalign|memalign|aligned_alloc"
    r"|_mid_memalign|__libc_\w+|unlink_chunk[.\w]*|alloc_perturb|sysmalloc|systrim|tcache_\w+"
    r"|_PyObject_(?:Malloc|Calloc|Realloc|Free)|pymalloc_\w+|allocate_from_new_pool"
    r"|insert_to_\w+pool|_PyMem_\w+"
)


@dataclass(frozen=True)
class Count:
    """One case in one process: per step, instructions, the estimated cycles (with the cache
    simulation), instructions by function, by ATen operator (`operators.py`), and those the
    allocators spent (`ALLOCATOR`; None for a row saved before they were set apart)."""

    instructions: float
    cycles: float | None
    functions: dict[str, float] = field(repr=False)
    operators: dict[str, operators.Operator] = field(default_factory=dict, repr=False)
    allocator: float | None = None


def allocator_instructions(functions: dict[str, float]) -> float:
    """The instructions per step of `functions` ({'function [object]': n}) in the allocators."""
    return sum(n for name, n in functions.items() if ALLOCATOR.fullmatch(bare_name(name)))


def bare_name(name: str) -> str:
    """'_int_free [libc.so.6]' and callgrind's recursion mark ("'2") as '_int_free'."""
    if name.endswith("]") and " [" in name:
        name = name.rsplit(" [", 1)[0]
    return name.split("'", 1)[0]


@dataclass
class Process:
    """One counting worker's environment and counts; a case it cannot run has a reason."""

    label: str
    info: dict
    counts: dict[Case, Count]
    unsupported: dict[Case, str]


class Running:
    """The counting workers started so far, to stop them all at once; one that starts after
    the stop is stopped at once."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.stopped = False
        self.lock = threading.Lock()

    def add(self, worker: Worker) -> None:
        with self.lock:
            self.workers.append(worker)
            stopped = self.stopped
        if stopped:
            worker.stop(polite=False)
            raise WorkerError(f"{worker.name} was stopped: the count was given up")

    def stop(self) -> None:
        """Kill every worker; the thread that waits on one sees its output end and ends too.
        Its streams are left to that thread: closed here, under its read, the read could
        land in another file that took the number."""
        with self.lock:
            self.stopped = True
            workers = list(self.workers)
        for worker in workers:
            kill_group(worker.process)


def progress_steps(cases: list[Case]) -> int:
    """The steps `count_process` reports: started, each case built, instrumented, each counted."""
    return 2 * len(cases) + 2


def count_process(
    python: str,
    label: str,
    cases: list[Case],
    cache_sim: bool = False,
    running: Running | None = None,
    expect: Expected | None = None,
    progress: Callable[[str], None] = lambda done: None,
) -> Process:
    """Start one counting worker of `python`, count every case, stop it. The worker is kept in
    `running` meanwhile, for whoever must stop it early; `expect`: the code it must import;
    `progress` hears each step done (`progress_steps`), for a progress bar."""
    folder = Path(tempfile.mkdtemp(prefix="cifar-spec-count-"))
    out_file = folder / "callgrind.out"
    try:
        worker = Worker(
            python,
            label,
            threads=1,
            # TMPDIR: valgrind makes its gdbserver's pipes there (callgrind_control talks to
            # it through them) and leaves them when its process is killed, 3 a worker.
            env={**os.environ, **COUNT_ENV, "TMPDIR": str(folder)},
            wrapper=callgrind_command(out_file, cache_sim),
            hello_timeout=COUNT_HELLO_TIMEOUT,
            # A folder of its own, empty, so that nothing about the caller's folder is
            # counted: runs started from two folders once counted 0.1% apart (the folder
            # was on the path then; spawn's start now keeps it off).
            cwd=str(folder),
            expect=expect,
            started=running.add if running is not None else None,
        )
        progress(f"{label} started")
        try:
            unsupported = {}
            for case in cases:
                reply = worker.call({**case.request(), "warm_up_steps": WARM_UP}, BUILD_TIMEOUT)
                if "unsupported" in reply:
                    unsupported[case] = reply["unsupported"]
                progress(f"{label} built {case.name}")
            worker.call({"op": "instrument"}, COUNT_TIMEOUT)
            progress(f"{label} instrumented")
            counts = {}
            for case in cases:
                if case not in unsupported:
                    steps = steps_for(case.batch)
                    reply = worker.call(
                        {"op": "count", "key": case.key, "steps": steps}, COUNT_TIMEOUT
                    )
                    counts[case] = read_dump(Path(f"{out_file}.{reply['dump']}"), steps)
                progress(f"{label} counted {case.name}")
            return Process(label, worker.info, counts, unsupported)
        finally:
            # Killed, not asked to exit: every dump it made is written and read, and its exit
            # under valgrind (Python's finalization, emulated) took the 5 s a polite stop
            # waits before it kills anyway.
            worker.stop(polite=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def count_all(
    pythons: dict[str, str],
    processes: int,
    cases: list[Case],
    cache_sim: bool = False,
    expected: dict[str, Expected] | None = None,
    progress: Callable[[str], None] = lambda done: None,
) -> dict[str, list[Process]]:
    """`processes` counting workers of each Python ({side: python}), run side by side on
    every core (counts do not mind the company): {side: [Process, ...]}. `expected`: {side:
    the code its workers must import}; a side left out is not checked. `progress` hears
    each process's steps (`progress_steps` each), from several threads."""
    expected = expected or {}
    jobs = [
        (side, python, f"{side}{i + 1}")
        for i in range(processes)
        for side, python in pythons.items()
    ]
    cores = machine.available_cores()
    running = Running()
    pool = ThreadPoolExecutor(max_workers=max(1, cores))
    results: dict[str, list[Process]] = {side: [] for side in pythons}
    try:
        futures = [
            (
                side,
                pool.submit(
                    count_process,
                    python,
                    label,
                    cases,
                    cache_sim,
                    running,
                    expected.get(side),
                    progress,
                ),
            )
            for side, python, label in jobs
        ]
        for side, future in futures:
            results[side].append(future.result())
    except BaseException:
        # Ctrl-C or the first failure: nobody waits minutes for the other processes.
        pool.shutdown(wait=False, cancel_futures=True)
        running.stop()
        raise
    pool.shutdown()
    return results


LINE = re.compile(r"^\s*([\d,]+)\s+([<*>]?)\s*(.*)$")


UNNAMED = re.compile(r"^\?\?\?:0x[0-9a-fA-F]+ \[\?\?\?\]$")


def read_dump(path: Path, steps: int) -> Count:
    """A dump's totals, its functions and its operators, per step."""
    try:
        text = path.read_text()
    except OSError as error:
        raise CountError(f"callgrind wrote no dump at {path} ({error.strerror})") from None
    events = re.search(r"^events:\s*(.+)$", text, re.M)
    totals = re.search(r"^(?:totals|summary):\s*(.+)$", text, re.M)
    if not events or not totals:
        raise CountError(f"{path} is not a callgrind dump (no events or totals line)")
    values = dict(zip(events.group(1).split(), map(int, totals.group(1).split())))
    if not values.get("Ir"):
        raise CountError(
            f"{path} counted no instructions: callgrind's collection was never switched on"
        )
    by_function = functions(path, steps)
    return Count(
        values["Ir"] / steps,
        estimated_cycles(values, steps),
        by_function,
        operators.read_operators(path, steps),
        allocator_instructions(by_function),
    )


def estimated_cycles(values: dict[str, int], steps: int) -> float | None:
    """callgrind's cycle estimate (KCachegrind's weights), where the cache was simulated."""
    if "I1mr" not in values:
        return None
    l1 = values["I1mr"] + values["D1mr"] + values["D1mw"]
    last = values["ILmr"] + values["DLmr"] + values["DLmw"]
    return (values["Ir"] + 10 * l1 + 100 * last) / steps


def functions(path: Path, steps: int) -> dict[str, float]:
    """Instructions per step by function (self cost), from callgrind_annotate.

    JIT-compiled code has no symbol and a new address in every process; it is
    pooled under the function that called it ("JIT code of oneDNN, called from ..."), which
    names the kernel and is the same in every process.
    """
    try:
        done = annotate(path)
    except subprocess.TimeoutExpired:
        raise CountError(f"callgrind_annotate did not read {path} within 300 s") from None
    if done.returncode:
        said = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CountError(f"callgrind_annotate could not read {path}: {said}")
    return parse_annotate(done.stdout, steps)


def annotate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "callgrind_annotate",
            "--inclusive=no",
            "--tree=caller",
            "--threshold=100",
            "--show-percs=no",
            "--auto=no",
            "--show=Ir",
            "--sort=Ir",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def parse_annotate(text: str, steps: int) -> dict[str, float]:
    """{function: instructions per step} from `callgrind_annotate --tree=caller` output."""
    out: dict[str, float] = {}
    callers: list[tuple[int, str]] = []
    started = False
    for line in text.splitlines():
        if line.rstrip().endswith("file:function"):
            started = True
            continue
        match = LINE.match(line) if started else None
        if not match:
            callers = []
            continue
        value, mark, name = int(match.group(1).replace(",", "")), match.group(2), match.group(3)
        if mark == "<":
            callers.append((value, name))
        elif mark == "*":
            key = jit_name(callers) if UNNAMED.match(name) else short_name(name)
            out[key] = out.get(key, 0.0) + value / steps
            callers = []
    return out


def short_name(name: str) -> str:
    """'file:function (Nx) [object]' as 'function [object's file name]'."""
    match = re.match(r"^(\S*?):(.*?)(?: \(\d+x\))?(?: \[(.*)\])?$", name)
    if not match:
        return name
    function, obj = match.group(2), match.group(3)
    if obj and re.fullmatch(r"0x[0-9a-fA-F]+", function):
        # A local function stripped of its symbol: its address moves with every build, so
        # two builds would show it as one function gone and another new; pooled per library.
        return f"code without a symbol in {Path(obj).name}"
    return f"{function} [{Path(obj).name}]" if obj else function


def jit_name(callers: list[tuple[int, str]]) -> str:
    """Unnamed code, by its heaviest caller and that caller's library."""
    if not callers:
        return f"{JIT}, no caller recorded"
    caller = short_name(max(callers)[1])
    return f"{JIT} of {library(caller)}, called from {caller}"


def library(function: str) -> str:
    for marker, name in (("dnnl::", "oneDNN"), ("mkl", "oneMKL"), ("fbgemm", "FBGEMM")):
        if marker in function:
            return name
    return "a library not known"

"""Worker processes that build and time training steps on request, and the handle to drive one.

One process is not a sample: the same step built the same way times 1.22 ms in some
fresh processes and 1.80 ms in others. So every figure comes from several workers, each
a fresh Python running this module (started by `spawn`: never code from the current
folder or a stray PYTHONPATH) that builds its own instances of the cases. A controller
(the benchmarks, `cifar-spec bench`, `compare`) asks one worker at a time for a round,
so that workers never compete for the cores, and may drive workers of two Python
environments side by side.

The protocol is one JSON object per line: a request on the worker's stdin, its reply on
stdout. The controller accepts only the replies listed in `REPLIES`, in order: a line of
another shape, a stray line, a closed pipe or a hang stops the worker and everything it
started, and ends in one line. (A stray line is found when it arrives before the next
request; one of a reply's own shape that arrives after the next request is sent passes
as that request's reply and is found one request later: only ids echoed in every reply
would close that gap, which workers of earlier checkouts, compared against, do not send.)
A worker needs torch and cifar_spec only: torchvision, which a custom or nightly torch
often lacks a match for, is never imported here.

Requests: {"op": "hello"} -> what this environment is; {"op": "build", "key", "device",
"variant", "batch"} -> {"seconds_per_step"} after warm-up, or {"unsupported": why};
{"op": "round", "key", "steps"} -> {"host", "gpu"} seconds per step; {"op": "peak",
"device", "dtype"} -> the peak FLOP/s in that precision; {"op": "drop", "key"}; {"op":
"exit"}. Under callgrind (`count.py`): {"op": "instrument"} switches instrumentation on;
{"op": "count", "key", "steps"} -> {"dump"}, the number of the callgrind dump that holds
exactly those steps. A request that fails gets {"error": "..."}.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

from cifar_spec.bench.spawn import clean_environment, python_command

BUILD_TIMEOUT = 300.0  # seconds: torch.compile on 2 cores takes up to a minute
HELLO_TIMEOUT = 120.0  # importing torch from a cold disk
INSTRUMENT_TIMEOUT = 60.0
MAX_REPLY = 1 << 20  # bytes in one reply line; the longest real one (hello) is under 1 kB


# The worker's side.


def environment() -> dict:
    """Which torch, cifar_spec and machine this worker runs on."""
    import platform

    import torch

    import cifar_spec
    from cifar_spec.bench.figures import cpu_model

    info = {
        "python": sys.executable,
        "python_version": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "threads": torch.get_num_threads(),
        "cifar_spec": str(Path(cifar_spec.__file__).parent),
        "git": git_revision(),
        "cpu_model": cpu_model(),
    }
    if torch.cuda.is_available():
        info["gpu_name"] = torch.cuda.get_device_name(0)
    return info


def git_revision() -> str | None:
    """The commit of the checkout cifar_spec is imported from, '+' when it has changes."""
    import cifar_spec

    folder = Path(cifar_spec.__file__).parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if rev.returncode:
        return None  # installed from a wheel, not a checkout
    return rev.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def build(request: dict, held: dict) -> dict:
    """Build a case, warm it up, keep it under its key; say why not where it cannot run."""
    from cifar_spec.bench import cases, measure

    variant = request["variant"]
    if variant in cases.LOOPS:
        root = held.setdefault("_data", tempfile.mkdtemp(prefix="cifar-spec-worker-"))
        case = cases.build_loop(variant, root)
    elif variant in cases.VARIANTS:
        options = cases.VARIANTS[variant]
        reason = cases.skip_reason(options, request["device"])
        if reason:
            return {"unsupported": reason}
        case = cases.build(options, request["device"], request["batch"], request.get("seed", 0))
    else:
        raise ValueError(f"this cifar_spec has no variant {variant!r}")
    held[request["key"]] = case
    if "warm_up_steps" in request:
        # A fixed warm-up, for counting: one that ends on the clock leaves each process's
        # heap in another state, and glibc's malloc then counts differently.
        seconds = [measure.time_round(case.step, case.device, 1).host]
        for _ in range(request["warm_up_steps"]):
            seconds.append(measure.time_round(case.step, case.device, 1).host)
        return {"seconds_per_step": seconds[-1]}
    return {"seconds_per_step": measure.warm_up(case.step, case.device)}


def peak(request: dict) -> dict:
    import torch

    from cifar_spec.bench.figures import measure_peak

    p = measure_peak(request["device"], getattr(torch, request["dtype"]))
    return {
        "best": p.best,
        "median": p.median,
        "shape": p.shape,
        "tries": p.tries,
        "precision": p.precision,
    }


def instrument() -> dict:
    """Switch callgrind's instrumentation on in this process.

    A counting worker starts with it off, so that importing torch and building
    and warming up the cases run at valgrind's plain speed (about 4x faster).
    callgrind reads the request only while this process runs code, not while it
    waits in a system call, so this loop spins until callgrind_control has its answer.
    """
    done = subprocess.Popen(
        ["callgrind_control", "--instr=on", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + INSTRUMENT_TIMEOUT
    while done.poll() is None:
        if time.monotonic() > deadline:
            done.kill()
            raise RuntimeError(
                f"callgrind did not switch instrumentation on within {INSTRUMENT_TIMEOUT:.0f} s"
            )
    said = done.stdout.read().decode(errors="replace")
    if done.returncode or "OK" not in said:
        raise RuntimeError(f"this worker is not running under callgrind ({said.strip()[-200:]})")
    return {}


def count(request: dict, held: dict) -> dict:
    """Run one step uncounted, then `steps` steps with callgrind collecting, and dump them.

    torch's client requests toggle callgrind's collection around exactly these steps
    (the worker starts with collection off) and dump them to a file of their own.
    """
    import torch

    from cifar_spec.bench.measure import gc_off

    if not torch._C._valgrind_supported_platform():
        raise RuntimeError("this torch was built without valgrind's client requests")
    case = held[request["key"]]
    with gc_off():  # a collection is Python's business, not the step's
        case.step()
        torch._C._valgrind_toggle()
        for _ in range(request["steps"]):
            case.step()
        torch._C._valgrind_toggle_and_dump_stats()
    held["_dumps"] = held.get("_dumps", 0) + 1
    return {"dump": held["_dumps"]}


def handle(request: dict, held: dict) -> dict:
    from cifar_spec.bench import measure

    op = request.get("op")
    if op == "hello":
        return environment()
    if op == "build":
        return build(request, held)
    if op == "round":
        case = held[request["key"]]
        r = measure.time_round(case.step, case.device, request["steps"], untimed=1)
        return {"host": r.host, "gpu": r.gpu}
    if op == "peak":
        return peak(request)
    if op == "instrument":
        return instrument()
    if op == "count":
        return count(request, held)
    if op == "drop":
        held.pop(request["key"], None)
        return {}
    raise ValueError(f"unknown request {op!r}")


def serve(threads: int | None = None) -> None:
    """Answer requests until stdin closes or an exit request comes."""
    import torch

    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    # A stray print must not corrupt the protocol, from Python or from a library's C code
    # (oneMKL prints its warnings on file descriptor 1).
    sys.stdout = sys.stderr
    os.dup2(sys.stderr.fileno(), 1)
    if threads:
        torch.set_num_threads(threads)
    # A case trains on one fixed batch, which the model soon memorizes; its gradients
    # then shrink into denormal floats, which x86 CPUs compute 20-100x slower (a batch-1
    # eager step went from 4 ms to 300 ms within a few hundred steps). Flushing them to
    # zero keeps every round timing the step users run on real data.
    torch.set_flush_denormal(True)
    held: dict = {}
    try:
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("op") == "exit":
                break
            try:
                reply = handle(request, held)
            except Exception as error:  # reported to the controller, which says what failed
                reply = {"error": f"{type(error).__name__}: {error}"}
            protocol.write(json.dumps(reply) + "\n")
            protocol.flush()
    finally:
        if "_data" in held:
            shutil.rmtree(held["_data"], ignore_errors=True)


# The controller's side.

NONE = type(None)
TEXT = (str, NONE)
# Each request's possible replies: the fields each must have, and those it may have.
# Nothing else is accepted: a reply of another shape is not from a worker of ours.
REPLIES: dict[str, list[tuple[dict, dict]]] = {
    "hello": [
        (
            {
                "python": str,
                "python_version": str,
                "torch": str,
                "cuda": TEXT,
                "cudnn": (int, NONE),
                "threads": int,
                "cifar_spec": str,
                "git": TEXT,
                "cpu_model": str,
            },
            {"gpu_name": str},
        )
    ],
    "build": [({"seconds_per_step": float}, {}), ({"unsupported": str}, {})],
    "round": [({"host": float, "gpu": (float, NONE)}, {})],
    "peak": [({"best": float, "median": float, "shape": str, "tries": int, "precision": str}, {})],
    "instrument": [({}, {})],
    "count": [({"dump": int}, {})],
    "drop": [({}, {})],
}
ERROR_REPLY = ({"error": str}, {})


def fits(value: object, kinds: type | tuple) -> bool:
    """`value` is of `kinds`; a float field takes an int, never a bool, NaN or infinity."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    if isinstance(value, float):
        return float in kinds and math.isfinite(value)
    return isinstance(value, kinds)


def reply_problem(op: str, reply: object) -> str | None:
    """What is wrong with `reply` as an answer to `op`, or None."""
    if not isinstance(reply, dict):
        return f"a {type(reply).__name__}, not an object"
    shapes = [*REPLIES.get(op, []), ERROR_REPLY]
    for required, optional in shapes:
        if set(required) <= set(reply) <= set(required) | set(optional):
            kinds = {**required, **optional}
            wrong = [name for name in reply if not fits(reply[name], kinds[name])]
            return f"a wrong value for {', '.join(wrong)}" if wrong else None
    expected = " or ".join(sorted(map(repr, map(sorted, (r for r, _ in shapes)))))
    return f"fields {sorted(reply)}, not {expected}"


class WorkerError(RuntimeError):
    """A worker crashed, hung or refused a request; the message says which and why."""


@dataclass
class Worker:
    """A running worker process of one Python environment."""

    python: str
    label: str
    threads: int | None = None
    env: dict | None = None
    wrapper: list[str] = field(default_factory=list)  # e.g. valgrind and its options
    hello_timeout: float = HELLO_TIMEOUT
    cwd: str | None = None  # where it runs; None: here
    process: subprocess.Popen = field(init=False)
    stderr: IO[bytes] = field(init=False)
    info: dict = field(init=False, default_factory=dict)
    _buffer: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self.stderr = tempfile.TemporaryFile()
        extra = ["--threads", str(self.threads)] if self.threads else []
        command = [*self.wrapper, *python_command(self.python, "cifar_spec.bench.worker", *extra)]
        # A session of its own, so that stopping it stops whatever it started.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=clean_environment(self.env),
            cwd=self.cwd,
            start_new_session=True,
        )
        self.info = self.call({"op": "hello"}, self.hello_timeout)

    def call(self, request: dict, timeout: float) -> dict:
        """Send one request and wait at most `timeout` seconds for its reply."""
        op = request["op"]
        if self.process.stdin.closed:
            raise WorkerError(f"{self.name} was stopped after an earlier failure")
        if self.pending():  # a line no request asked for: every later reply would be shifted
            self.refuse(f"sent a line before '{op}' was asked: {self._buffer[:80]!r}")
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            self.fail(f"before '{op}'")
        line = self.read_line(timeout)
        if line is None:
            self.stop(polite=False)  # a hung worker would not read an exit request
            raise WorkerError(
                f"{self.name} did not answer '{op}' within {timeout:.0f} s and was stopped"
            )
        if not line:
            self.fail(f"during '{op}'")
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            self.refuse(f"answered '{op}' with a line that is not JSON: {line!r:.80}")
        problem = reply_problem(op, reply)
        if problem:
            self.refuse(f"answered '{op}' with {problem}")
        if "error" in reply:
            raise WorkerError(f"{self.name} could not {op}: {reply['error']}")
        return reply

    def pending(self) -> bool:
        """Whether the worker has written anything that no request has read yet."""
        if self._buffer:
            return True
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(0):
                return False
        chunk = os.read(self.process.stdout.fileno(), 65536)
        self._buffer += chunk
        return bool(chunk)  # b'': the worker closed its output, which the call will report

    def read_line(self, timeout: float) -> bytes | None:
        """A line of the worker's stdout; b'' at its end; None when `timeout` passes first.

        Read unbuffered into a buffer of our own, so that `pending` sees every byte
        the worker wrote, and a line longer than any reply is not held in memory.
        """
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                if len(self._buffer) > MAX_REPLY:
                    self.refuse(f"sent a line of over {MAX_REPLY} bytes")
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return b""
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    @property
    def name(self) -> str:
        return f"worker {self.label} ({self.python})"

    def fail(self, when: str) -> NoReturn:
        """The worker broke off: stop it (it may still run, its output closed) and say how."""
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-3:]
        self.stop(polite=False)
        how = (
            f"closed its output {when} but kept running (it was stopped)"
            if code is None
            else f"exited {when} with exit code {code}"
        )
        raise WorkerError(f"{self.name} {how}" + (f": {' | '.join(tail)}" if tail else ""))

    def refuse(self, what: str) -> NoReturn:
        """The worker broke the protocol: stop it and everything it started, and say how."""
        self.stop(polite=False)
        raise WorkerError(f"{self.name} {what}; it was stopped (is it this cifar_spec's worker?)")

    def stop(self, polite: bool = True) -> None:
        """End the worker and everything it started; safe to call twice."""
        if polite and self.process.poll() is None:
            try:
                self.process.stdin.write(b'{"op": "exit"}\n')
                self.process.stdin.flush()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_workers(
    python: str, count: int, label: str, threads: int | None = None, env: dict | None = None
) -> list[Worker]:
    """`count` workers, started one after another so their imports do not compete."""
    workers: list[Worker] = []
    try:
        for i in range(count):
            workers.append(Worker(python, f"{label}{i + 1}", threads, env))
    except BaseException:
        stop_all(workers)
        raise
    return workers


def stop_all(workers: list[Worker]) -> None:
    for worker in workers:
        worker.stop()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cifar_spec.bench.worker",
        description="Build and time training steps on request (JSON lines on stdin and stdout).",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    serve(parser.parse_args(argv).threads)


if __name__ == "__main__":
    main()

"""The controller's handle on a worker process (`worker.py`), and the protocol it holds it to.

The controller accepts only the replies listed in `REPLIES`, in order: a line of
another shape, a stray line, a closed pipe or a hang stops the worker and everything it
started, and ends in one line. (A stray line is found when it arrives before the next
request; one of a reply's own shape that arrives after the next request is sent passes
as that request's reply and is found one request later: only ids echoed in every reply
would close that gap, which workers of earlier checkouts, compared against, do not send.)
A worker whose hello names another torch or cifar_spec than the one expected of it
(`Expected`) is stopped and refused in one line before it is asked for any work.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from cifar_spec.bench.spawn import clean_environment, python_command
from cifar_spec.errors import WorkerError, WrongImports

BUILD_TIMEOUT = 300.0  # seconds: torch.compile on 2 cores takes up to a minute


HELLO_TIMEOUT = 120.0  # importing torch from a cold disk


DROP_TIMEOUT = 60.0


MAX_REPLY = 1 << 20  # bytes in one reply line; the longest real one (hello) is about 1 kB


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
            # Optional: workers of earlier checkouts (compared against) do not send them.
            {
                "torch_git": TEXT,
                "torch_file": TEXT,
                "pythonpath": str,
                "torchvision": TEXT,
                "gpu_name": str,
                "gpu_memory_gib": float,
                "gpu_count": int,
                "gpu_clock_mhz": int,
                "gpu_power_draw_mw": int,
                "gpu_power_limit_mw": int,
                "gpu_max_sm_clock_mhz": int,
                "gpu_driver": str,
            },
        )
    ],
    "build": [({"seconds_per_step": float}, {}), ({"unsupported": str}, {})],
    "round": [({"host": float, "gpu": (float, NONE)}, {})],
    "profile": [({"profile": dict}, {})],  # its inside is checked by profiled.Profile.from_dict
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


# The fields of a hello that name the code a worker runs: each package's file (compared
# where it leads: a venv's lib64 is often a link to its lib) and its versions.
FILES = {"torch": "torch_file", "cifar_spec": "cifar_spec"}


VERSIONS = {"torch": ("torch", "torch_git"), "cifar_spec": ()}


def differ(one: dict, other: dict, package: str) -> bool:
    """Whether `package` is another in `one` than in `other`, on every field both know."""
    for name in (FILES[package], *VERSIONS[package]):
        a, b = one.get(name), other.get(name)
        if a is None or b is None:
            continue
        if name == FILES[package]:
            a, b = os.path.realpath(a), os.path.realpath(b)
        if a != b:
            return True
    return False


def named(info: dict, packages: list[str]) -> str:
    """The packages as `info` knows them: torch 2.14.1 (git 1a2b3c4d5e6f) from FILE, and
    cifar_spec from FOLDER."""
    said = []
    if "torch" in packages:
        version = f" {info['torch']}" if info.get("torch") else ""
        git = f" (git {info['torch_git'][:12]})" if info.get("torch_git") else ""
        said.append(f"torch{version}{git} from {info.get('torch_file') or 'a file not known'}")
    if "cifar_spec" in packages:
        said.append(f"cifar_spec from {info.get('cifar_spec')}")
    return " and ".join(said)


@dataclass(frozen=True)
class Expected:
    """The torch and cifar_spec a worker must import (`machine.imports`'s fields; a field left
    out or None is not known, and not checked: a worker of an earlier checkout sends no torch
    file, the check of a Python finds files, not versions), and who expects them."""

    imports: dict
    source: str  # completes "where ... torch from F": "this command imported", ...

    def problem(self, said: dict) -> str | None:
        """How the imports in a worker's hello differ from these, or None."""
        wrong = [package for package in FILES if differ(self.imports, said, package)]
        if not wrong:
            return None
        return f"imported {named(said, wrong)}, where {self.source} {named(self.imports, wrong)}"


def start_process(command: list[str], env: dict | None = None, **popen: Any) -> subprocess.Popen:
    """`command` started in `env` (default: ours) as a process of ours gets it
    (`clean_environment`), in a session of its own, so that `kill_group` stops whatever it
    started too; `popen`: Popen's other arguments (its pipes, its folder)."""
    return subprocess.Popen(command, env=clean_environment(env), start_new_session=True, **popen)


def kill_group(process: subprocess.Popen) -> None:
    """Kill `process` and everything in its session's process group, if it still runs, and
    reap it; safe to call twice."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


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
    expect: Expected | None = None  # the code it must run; None: not checked
    # Told of the worker as soon as its process runs, before its hello: for whoever may have
    # to stop it while it starts (Ctrl-C during a count, whose start takes minutes).
    started: Callable[[Worker], None] | None = None
    process: subprocess.Popen = field(init=False)
    stderr: IO[bytes] = field(init=False)
    info: dict = field(init=False, default_factory=dict)
    _buffer: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self.stderr = tempfile.TemporaryFile()
        extra = ["--threads", str(self.threads)] if self.threads else []
        command = [*self.wrapper, *python_command(self.python, "cifar_spec.bench.worker", *extra)]
        self.process = start_process(
            command,
            self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=self.cwd,
        )
        if self.started is not None:
            self.started(self)
        self.info = self.call({"op": "hello"}, self.hello_timeout)
        self.check_imports()

    def check_imports(self) -> None:
        """Refuse, before any request of work, a worker that runs other code than expected:
        its figures would be a verdict about code nobody asked to judge."""
        problem = self.expect.problem(self.info) if self.expect else None
        if problem:
            self.stop(polite=False)
            raise WrongImports(
                f"{self.name} {problem}; it was stopped before any measurement (a worker "
                "never imports from the folder the command runs in)"
            )

    def call(self, request: dict, timeout: float) -> dict:
        """Send one request and wait at most `timeout` seconds for its reply."""
        op = request["op"]
        if self.stopped:
            raise WorkerError(f"{self.name} was stopped after an earlier failure")
        if self.pending():  # a line no request asked for: every later reply would be shifted
            self.refuse(f"sent a line before '{op}' was asked: {self._buffer[:80]!r}")
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            line = self.read_line(timeout)
        except BrokenPipeError:
            self.fail(f"before '{op}'")
        except BaseException:
            # Ctrl-C once it may have the request: its reply, still to come, would be read
            # as the next request's, so it is stopped, and the interrupt goes on.
            self.stop(polite=False)
            raise
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

    @property
    def stopped(self) -> bool:
        return self.process.stdin.closed

    def drop(self, key: str) -> None:
        """Forget case `key`. A worker already stopped (a failure, Ctrl-C) holds nothing, and
        asking it would put a second error in place of the one that stopped it."""
        if not self.stopped:
            self.call({"op": "drop", "key": key}, DROP_TIMEOUT)

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
        kill_group(self.process)
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
    python: str,
    count: int,
    label: str,
    threads: int | None = None,
    env: dict | None = None,
    expect: Expected | None = None,
) -> list[Worker]:
    """`count` workers, started one after another so their imports do not compete."""
    workers: list[Worker] = []
    try:
        for i in range(count):
            workers.append(Worker(python, f"{label}{i + 1}", threads, env, expect=expect))
    except BaseException:
        stop_all(workers)
        raise
    return workers


def stop_all(workers: list[Worker]) -> None:
    for worker in workers:
        worker.stop()

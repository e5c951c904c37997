"""The worker process: builds and times training steps on request, one JSON line at a time.

One process is not a sample: the same step built the same way times 1.22 ms in some
fresh processes and 1.80 ms in others. So every figure comes from several workers, each
a fresh Python running this module (started by `spawn`: in the user's environment, never
with code from the current folder) that builds its own instances of the cases. The controller
(`_handle.Worker`, for the benchmarks, `cifar-spec bench`, `compare`) asks one worker at a
time for a round, so that workers never compete for the cores, and may drive workers of
two Python environments side by side.

The protocol is one JSON object per line: a request on the worker's stdin, its reply on
stdout; `_handle.REPLIES` lists what the controller accepts. A worker needs torch and
cifar_spec only: torchvision, which a custom or nightly torch often lacks a match for, is
never imported here.

Requests: {"op": "hello"} -> what this environment is and what it imported (torch's
version, git hash and file, cifar_spec's folder, PYTHONPATH); {"op": "build", "key",
"device", "variant", "batch"} -> {"seconds_per_step"} after warm-up, or {"unsupported":
why}; {"op": "round", "key", "steps"} -> {"host", "gpu"} seconds per step, the steps run
from the state the case was built in; {"op": "profile", "key", "steps", "trace"?} ->
{"profile"}: those steps under torch.profiler, read into per-step aggregates (`profiled.py`),
the trace written where "trace" says; {"op": "peak", "device", "dtype"} -> the peak FLOP/s
in that precision; {"op": "drop", "key"}; {"op": "exit"}. Under callgrind (`callgrind.py`):
{"op": "instrument"} switches instrumentation on; {"op": "count", "key", "steps"} ->
{"dump"}, the number of the callgrind dump that holds exactly those steps. A request that
fails gets {"error": "..."}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

from cifar_spec.bench import cases, measure, profiled
from cifar_spec.bench.figures import measure_peak
from cifar_spec.bench.machine import describe

INSTRUMENT_TIMEOUT = 60.0


@dataclass
class Held:
    """What a worker keeps between requests: its built cases by key, the folder its loops read
    data from (made on first need, removed at exit), and the dumps it has made so far."""

    cases: dict = field(default_factory=dict)
    data_root: str | None = None
    dumps: int = 0


def build(request: dict, held: Held) -> dict:
    """Build a case, warm it up, keep it under its key; say why not where it cannot run."""
    variant = request["variant"]
    if variant in cases.LOOPS:
        if held.data_root is None:
            held.data_root = tempfile.mkdtemp(prefix="cifar-spec-worker-")
        case = cases.build_loop(variant, held.data_root)
    elif variant in cases.VARIANTS:
        options = cases.VARIANTS[variant]
        reason = cases.skip_reason(options, request["device"])
        if reason:
            return {"unsupported": reason}
        case = cases.build(options, request["device"], request["batch"], request.get("seed", 0))
    else:
        raise ValueError(f"this cifar_spec has no variant {variant!r}")
    held.cases[request["key"]] = case
    if "warm_up_steps" in request:
        # A fixed warm-up, for counting: one that ends on the clock leaves each process's
        # heap in another state, and glibc's malloc then counts differently.
        seconds = [measure.time_round(case.step, case.device, 1).host]
        for _ in range(request["warm_up_steps"]):
            seconds.append(measure.time_round(case.step, case.device, 1).host)
        return {"seconds_per_step": seconds[-1]}
    return {"seconds_per_step": measure.warm_up(case.step, case.device)}


def timed_round(request: dict, held: Held) -> dict:
    """A round of a case from the state it was built in, its loss checked after (cases.py)."""
    case = held.cases[request["key"]]
    case.restore()  # outside the clock; before the untimed step, so the caches hold a step's data
    r = measure.time_round(case.step, case.device, request["steps"], untimed=1)
    case.check()
    return {"host": r.host, "gpu": r.gpu}


def profiled_round(request: dict, held: Held) -> dict:
    """A case's steps under torch.profiler (`profiled.py`), from the state it was built in, its
    loss checked after; asked for after its timed rounds, never between them. With "trace", the
    steps' chrome trace is written to that path too."""
    case = held.cases[request["key"]]
    case.restore()
    profile = profiled.profile_steps(case.step, case.device, request["steps"], request.get("trace"))
    case.check()
    return {"profile": profile.as_dict()}


def peak(request: dict) -> dict:
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


def count(request: dict, held: Held) -> dict:
    """Run one step uncounted, then `steps` steps with callgrind collecting, and dump them.

    torch's client requests toggle callgrind's collection around exactly these steps
    (the worker starts with collection off) and dump them to a file of their own.
    """
    if not torch._C._valgrind_supported_platform():
        raise RuntimeError("this torch was built without valgrind's client requests")
    case = held.cases[request["key"]]
    with measure.gc_off():  # a collection is Python's business, not the step's
        case.step()
        torch._C._valgrind_toggle()
        for _ in range(request["steps"]):
            case.step()
        torch._C._valgrind_toggle_and_dump_stats()
    held.dumps += 1
    return {"dump": held.dumps}


def handle(request: dict, held: Held) -> dict:
    op = request.get("op")
    if op == "hello":
        return describe(torch.get_num_threads())
    if op == "build":
        return build(request, held)
    if op == "round":
        return timed_round(request, held)
    if op == "profile":
        return profiled_round(request, held)
    if op == "peak":
        return peak(request)
    if op == "instrument":
        return instrument()
    if op == "count":
        return count(request, held)
    if op == "drop":
        held.cases.pop(request["key"], None)
        return {}
    raise ValueError(f"unknown request {op!r}")


def serve(threads: int | None = None) -> None:
    """Answer requests until stdin closes or an exit request comes."""
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
    held = Held()
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
        if held.data_root is not None:
            shutil.rmtree(held.data_root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
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

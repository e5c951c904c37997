"""Launch and joining: the world torchrun describes, its process group, and a rank's end.

``torchrun`` starts one process (a *rank*) per device and tells each, in its
environment, who it is (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and where the
others meet (``MASTER_ADDR``, ``MASTER_PORT``). ``world_from_env`` reads that
once, before any work, and refuses a half-set environment; ``process_group``
joins the group (or says in one line why it cannot: a port another program
holds, an address that names no machine, ranks that never came) and leaves it
on every exit path. A rank that torchrun started and that stops for a user's
mistake writes its line where torchrun's report of the failure reads it.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cifar_spec.errors import CifarSpecError, DistributedError, StoppedElsewhere
from cifar_spec.files import write_json

# What torchrun sets; a process with RANK or WORLD_SIZE set is one of several and needs all four.
ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_TIMEOUT = 300.0  # seconds: rank 0 may write the 60,000-image stand-in while others wait


def is_lost_peer(error: BaseException) -> bool:
    """Whether `error` is an exchange that failed: a rank gone (its connection reset) or silent
    past the timeout. Raised inside DDP's hooks, gloo's errors arrive as plain RuntimeErrors."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return type(error) is RuntimeError and any(name in text for name in ("gloo", "NCCL", "nccl"))


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes, as torchrun's environment states it."""

    rank: int  # 0 .. size - 1; rank 0 prints, and writes the run folder
    size: int  # how many processes train together (WORLD_SIZE)
    local_rank: int  # its index among the processes on its machine: which GPU it takes
    backend: str  # "gloo" (CPU) or "nccl" (CUDA)
    timeout: float = DEFAULT_TIMEOUT  # seconds an exchange waits for a missing rank
    address: str = "127.0.0.1"  # MASTER_ADDR: where rank 0 (or torchrun) keeps the run's store
    port: int = 29500  # MASTER_PORT

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """`device` for this rank: each rank on a machine takes the GPU of its LOCAL_RANK."""
        return f"cuda:{self.local_rank}" if torch.device(device).type == "cuda" else device


def read_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise DistributedError(
            f"{name}={environ[name]!r} is not a whole number; launch with torchrun, which sets it"
        ) from None


def pick_backend(backend: str, device: str) -> str:
    """The backend asked for (auto: nccl on CUDA, gloo on the CPU), refused where it cannot run."""
    on_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        backend = "nccl" if on_cuda else "gloo"
    if backend not in BACKENDS:
        raise DistributedError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "nccl" and not on_cuda:
        raise DistributedError(
            "--backend nccl exchanges CUDA tensors only, and this run is on the CPU; "
            "use --backend gloo (or auto)"
        )
    available = dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
    if not available:
        raise DistributedError(f"this torch was built without {backend}; use the other backend")
    return backend


def world_from_env(
    environ: Mapping[str, str],
    device: str,
    backend: str = "auto",
    timeout: float = DEFAULT_TIMEOUT,
) -> World | None:
    """The world torchrun describes in `environ`, checked; None for a single process."""
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return None
    missing = [name for name in ENVIRONMENT if not environ.get(name)]
    if missing:
        raise DistributedError(
            f"{', '.join(missing)} not set, but RANK or WORLD_SIZE is: the environment is half a "
            "distributed launch; start with `torchrun --nproc-per-node N -m cifar_spec train ...`, "
            "or unset RANK and WORLD_SIZE to train in one process"
        )
    if not dist.is_available():
        raise DistributedError("this torch was built without torch.distributed")
    size, rank = read_int(environ, "WORLD_SIZE"), read_int(environ, "RANK")
    if size < 1 or not 0 <= rank < size:
        raise DistributedError(
            f"RANK={rank} is outside a world of WORLD_SIZE={size} processes "
            f"(ranks 0 to {size - 1}); launch with torchrun, which sets both"
        )
    port = read_int(environ, "MASTER_PORT")
    if not 0 < port < 65536:
        raise DistributedError(
            f"MASTER_PORT={port} is not a port (1 to 65535); give every process the same free "
            "port, or launch with `torchrun --standalone`, which picks one"
        )
    local_rank = read_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
    world = World(
        rank,
        size,
        local_rank,
        pick_backend(backend, device),
        timeout,
        environ["MASTER_ADDR"],
        port,
    )
    # torchrun says how many processes it starts here: then all refuse alike, not only those
    # past the last GPU (which would leave the others waiting for them to join).
    here = read_int(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else 0
    check_device(world, device, max(here, local_rank + 1))
    check_address(world)
    return world


def check_device(world: World, device: str, here: int) -> None:
    """Refuse a device that the `here` processes on this machine cannot each have one of."""
    parsed = torch.device(device)
    if parsed.type != "cuda":
        return
    if parsed.index is not None and world.size > 1:
        raise DistributedError(
            f"--device {device} puts every process on one GPU; pass --device cuda, and each "
            "process takes the GPU of its LOCAL_RANK"
        )
    if here > torch.cuda.device_count():
        raise DistributedError(
            f"{here} processes on this machine (LOCAL_WORLD_SIZE, or LOCAL_RANK + 1) but it "
            f"has {torch.cuda.device_count()} CUDA devices; start at most that many processes "
            "per machine (--nproc-per-node)"
        )


def end_rank(code: int) -> None:
    """End a rank now, its output flushed, without the interpreter's finalization.

    Its process group is gone by then, its files written and closed. Finalization
    destroys gloo's objects while its threads may still hold Python objects, and that
    ended a rank in std::terminate (SIGABRT, "terminate called without an active
    exception") after it had done all its work: 2 of 13 runs of the spec on a 2-core
    machine, one of them under load (torchrun's training test, the DDP benchmark's group).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


# Set by torchrun for each process it starts: the file its report of a failed process reads
# (torch.distributed.elastic's error file). Its presence is how a rank knows torchrun reports it.
ERROR_FILE = "TORCHELASTIC_ERROR_FILE"


def tell_torchrun(environ: Mapping[str, str], line: str) -> None:
    """Write `line` where torchrun's report of this failed process reads its reason.

    torchrun answers any exit but 0 with its own report (ChildFailedError); without
    this file, that report's `traceback :` row of the rank reads "To enable traceback
    see: <torch's docs>", sending a user after a traceback that a refusal does not have.
    """
    path = environ.get(ERROR_FILE)
    if not path:
        return
    # torch's own layout (ErrorHandler.record_exception) less its py_callstack, which the
    # report would show in place of the message.
    reason = {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}
    try:
        write_json(path, {"message": reason})
    except (OSError, CifarSpecError):  # the line is printed all the same; only torchrun's
        pass  # report goes without it, and a failure here must not hide the user's mistake


@contextmanager
def reported_to_torchrun(environ: Mapping[str, str]) -> Iterator[None]:
    """A user's mistake that ends this rank, written for torchrun's report (`tell_torchrun`)."""
    try:
        yield
    except CifarSpecError as error:
        tell_torchrun(environ, f"cifar-spec: error: {error}")
        raise


def said_once_per_machine(
    error: CifarSpecError, environ: Mapping[str, str], wait: float
) -> CifarSpecError:
    """`error`, decided before joining from the flags and environment alone, as this rank is
    to raise it, after up to `wait` seconds.

    The ranks torchrun starts on a machine share both, so all refuse alike, and the one
    of LOCAL_RANK 0 says it. The others wait without a word: torchrun stops them once
    that rank has exited. Had they exited first, torchrun would have stopped rank 0
    before it printed (seen: the line then stood only in torchrun's report). Past
    `wait` a rank that still runs stops, its line in torchrun's report all the same.
    A process started by hand has a terminal of its own and says its own at once.
    """
    if ERROR_FILE not in environ or environ.get("LOCAL_RANK", "0") == "0":
        return error
    time.sleep(wait)
    return StoppedElsewhere(str(error))


def check_address(world: World) -> None:
    """Refuse a MASTER_ADDR that names no machine at once; torch would retry it for a timeout."""
    try:
        socket.getaddrinfo(world.address, world.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise DistributedError(
            f"MASTER_ADDR={world.address} names no machine that this one can find ({reason}); "
            "set it to rank 0's host name or IP address, the same on every process"
        ) from None


def join_problem(error: BaseException, world: World) -> str:
    """What torch's failure to join means, and what to change: one line."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    at = f"{world.address}:{world.port}"
    if "EADDRINUSE" in text or "address already in use" in text:
        return (
            f"MASTER_PORT {world.port} is taken on this machine by another program, so rank 0 "
            "cannot keep the run's store there; give every process the same free port, or "
            "launch with `torchrun --standalone`, which picks one"
        )
    joined = re.search(r"(\d+)/(\d+) clients joined", text)
    if joined:
        return (
            f"only {joined[1]} of {joined[2]} processes came to {at} within --dist-timeout "
            f"{world.timeout:g} s; start all {world.size} with the same MASTER_ADDR, MASTER_PORT "
            "and WORLD_SIZE (or raise --dist-timeout)"
        )
    if "trying to connect" in text:
        return (
            f"nothing answered at {at} within --dist-timeout {world.timeout:g} s; start rank 0 "
            "(it keeps the run's store there) and give every process the same MASTER_ADDR and "
            "MASTER_PORT"
        )
    return (
        f"could not join the other processes at {at} ({text[:200]}); give every process the "
        "same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, and start rank 0"
    )


def wait_for_store(world: World) -> None:
    """Return once something accepts connections at MASTER_ADDR:MASTER_PORT, where rank 0 (or
    torchrun) keeps the run's store; past --dist-timeout, stop in one line.

    Left to torch, a store that never comes costs twice the timeout (a connection tried
    for the timeout, then once more) and about 40 lines of C++ frames on stderr: 20 s
    against --dist-timeout 10 for a rank 1 started without its rank 0.
    """
    deadline = time.monotonic() + world.timeout
    while True:
        left = deadline - time.monotonic()
        try:
            # Closed unanswered: the store takes it for a client that left (no word from torch).
            with socket.create_connection((world.address, world.port), timeout=max(left, 0.1)):
                return
        except OSError:
            if left <= 0:
                break
            time.sleep(min(0.1, left))  # refused at once: rank 0 may still be starting
    raise DistributedError(
        f"rank 0 never came: nothing answered at {world.address}:{world.port} within "
        f"--dist-timeout {world.timeout:g} s; start every rank with torchrun, or give each the "
        "same MASTER_ADDR and MASTER_PORT and start rank 0 (it keeps the run's store there)"
    )


# Joining waits for the store (up to the timeout), then for every rank's address in it (the
# timeout again); past both, and a margin for a loaded machine, torch is stuck, not slow.
JOIN_MARGIN = 5.0


def join(world: World) -> None:
    """Join the run's process group, or stop in one line that says why it cannot be joined.

    torch bounds every wait but one: a client of the store waits for ever for the first
    reply of whatever accepted its connection at MASTER_PORT (a program that is not a
    store held rank 1 for 56 s, until that program closed the port). So torch joins in a
    thread of its own, and this one stops waiting once torch's own waits (twice the
    timeout) and `JOIN_MARGIN` have passed.
    """
    if not world.leader:  # rank 0 keeps the store, or finds torchrun's already up
        wait_for_store(world)
    failed: list[BaseException] = []

    def init() -> None:
        try:
            if world.backend == "nccl":
                torch.cuda.set_device(world.local_rank)  # the current GPU is per thread
            dist.init_process_group(
                world.backend,
                rank=world.rank,
                world_size=world.size,
                timeout=timedelta(seconds=world.timeout),
            )
        except BaseException as error:  # handed to the waiting thread, which says it
            failed.append(error)

    joiner = threading.Thread(target=init, name="join-process-group", daemon=True)
    joiner.start()
    limit = 2 * world.timeout + JOIN_MARGIN
    joiner.join(limit)
    if joiner.is_alive():
        raise DistributedError(
            f"nothing at {world.address}:{world.port} answered as the run's store in {limit:g} s "
            f"(twice --dist-timeout, and {JOIN_MARGIN:g}): another program holds MASTER_PORT "
            f"{world.port}, or rank 0 is stuck; give every process the same free port, or "
            "launch with `torchrun --standalone`, which picks one"
        )
    if failed:
        raise DistributedError(join_problem(failed[0], world)) from None


@contextmanager
def process_group(world: World) -> Iterator[None]:
    """Join the run's process group for the block; leave it however the block ends."""
    if world.backend == "nccl":
        torch.cuda.set_device(world.local_rank)  # before any collective: nccl binds to it
    join(world)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    # The ranks leave together: a rank that tore its connections down while another was
    # still in its last exchange was seen ended by gloo in std::terminate (SIGABRT, "terminate
    # called without an active exception"; once in the spec, on a loaded machine).
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()

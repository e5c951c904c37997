"""Data-parallel scaling: the DDP step on N CPU processes against one process, paired.

Each *group* is N fresh processes joined by gloo on 127.0.0.1, one thread
each. Rank 0 holds two arms: the step alone (its own model, one thread, the
per-rank batch) and its rank of the DDP step over the N processes (the same
per-rank batch, N times the images per step). It alternates their rounds
A B B A ... as `paired.py` does; the other ranks wait, idle, for the number of
steps of each DDP round. So every pair compares one process's images/s with
the N processes' on the same cores, under the same load, and the groups are
the clusters of `stats.estimate`: a figure with a 95% interval.

The speed-up is the total images/s of the N processes over the one's; the
scaling efficiency is that over N (1.0: N processes, N times the images).
Weak scaling, as DDP is used: the batch of each process stays the same.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from cifar_spec.bench import cases, measure, report
from cifar_spec.bench.paired import Samples, alternate
from cifar_spec.bench.spawn import clean_environment, python_command
from cifar_spec.distributed.launch import World, end_rank
from cifar_spec.distributed.sharding import Shard, data_parallel_step
from cifar_spec.errors import ConfigError, WorkerError
from cifar_spec.model import IMAGE_SHAPE, CifarNet
from cifar_spec.step import prepare_model, unsupported

GROUPS = 3  # fresh sets of processes: one process's luck must show in the interval
PAIRS = 12  # pairs of rounds per group
LAUNCH_TIMEOUT = 600.0  # seconds for one group, start-up and warm-up included


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_arms(variant: str, batch: int, world: int) -> tuple[cases.StepBench, cases.StepBench]:
    """One process's step and this rank's DDP step, each on its own fixed random batch."""
    options = cases.VARIANTS[variant]
    alone = cases.build(options, "cpu", batch, seed=0)
    torch.manual_seed(0)
    model = prepare_model(CifarNet(), options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    shard = Shard(World(dist.get_rank(), world, dist.get_rank(), "gloo"), weight=1 / world)
    step = data_parallel_step(model, optimizer, options, shard)
    # Random pixels and labels, other on each rank, as DDP's ranks see other images.
    images = torch.rand(batch, *IMAGE_SHAPE)
    labels = torch.randint(0, 10, (batch,))
    snapshot = cases.Snapshot(model, optimizer)
    together = cases.StepBench(
        options, torch.device("cpu"), batch, model, lambda: step(images, labels), snapshot
    )
    return alone, together


def order(steps: int) -> None:
    """Rank 0 tells the others how many DDP steps come next (0: stop)."""
    dist.broadcast(torch.tensor([steps]), src=0)


def follow(together: cases.StepBench) -> None:
    """The other ranks: run as many DDP steps as rank 0 orders, until it orders none.

    Every rank restores its arm's saved state after each order's steps, as rank 0 does,
    so that each order starts from the weights the arms were built with (cases.py says why).
    """
    while True:
        steps = torch.tensor([0])
        dist.broadcast(steps, src=0)
        if not steps.item():
            return
        for _ in range(steps.item()):
            together.step()
        together.restore()


def round_alone(alone: cases.StepBench, steps: int) -> float:
    """One round of the step alone, from its saved state, its loss checked after."""
    alone.restore()
    seconds = measure.time_round(alone.step, alone.device, steps).host
    alone.check()
    return seconds


def round_together(together: cases.StepBench, steps: int) -> float:
    """One round of the DDP step: ordered outside the clock; the others start as rank 0 does."""
    order(steps)
    seconds = measure.time_round(together.step, together.device, steps).host
    together.check()
    together.restore()  # as the others do after an order
    return seconds


def lead(alone: cases.StepBench, together: cases.StepBench, pairs: int) -> list[list[float]]:
    """Rank 0: warm both arms up, then `pairs` paired rounds; seconds per step of each."""

    def one_ordered_step() -> None:  # for the warm-up only: it times single steps
        order(1)
        together.step()
        together.restore()  # as the others do; 0.1 ms in a warm-up that only sizes rounds

    cpu = torch.device("cpu")
    steps = [
        measure.steps_per_round(measure.warm_up(alone.step, cpu)),
        measure.steps_per_round(measure.warm_up(one_ordered_step, cpu)),
    ]
    rounds = (lambda: round_alone(alone, steps[0]), lambda: round_together(together, steps[1]))
    timed = [list(pair) for pair in alternate(rounds, pairs)]
    order(0)
    return timed


def rank_main(variant: str, batch: int, pairs: int) -> None:
    """One rank of a group, torchrun-style environment given; rank 0 prints the pairs as JSON."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the workers do (worker.py says why)
    world = int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo")
    try:
        alone, together = build_arms(variant, batch, world)
        if dist.get_rank() == 0:
            print(json.dumps(lead(alone, together, pairs)))
        else:
            follow(together)
    finally:
        dist.destroy_process_group()


def run_group(variant: str, batch: int, ranks: int, pairs: int) -> list[tuple[float, float]]:
    """One group of fresh ranks; rank 0's (alone, together) seconds per step, per pair."""
    port = free_port()
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds this cifar_spec
    command = python_command(
        sys.executable, "cifar_spec.bench.bench_ddp", variant, str(batch), str(pairs), first=root
    )
    started = []
    try:
        for rank in range(ranks):
            env = dict(
                clean_environment(),
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(ranks),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS="1",
            )
            started.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                    text=True,
                    start_new_session=True,
                )
            )
        out, _ = started[0].communicate(timeout=LAUNCH_TIMEOUT)
        for process in started[1:]:
            process.wait(timeout=60)
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout:
                process.stdout.close()
    if started[0].returncode:
        raise WorkerError(f"rank 0 of the {variant} group failed (exit {started[0].returncode})")
    return parse_pairs(out, variant)


def parse_pairs(out: str, variant: str) -> list[tuple[float, float]]:
    """Rank 0's last line: a JSON list of [alone, together] seconds, both positive."""
    try:
        pairs = json.loads(out.strip().splitlines()[-1])
        if (
            all(
                len(pair) == 2 and all(isinstance(v, float) and 0 < v < math.inf for v in pair)
                for pair in pairs
            )
            and pairs
        ):
            return [tuple(pair) for pair in pairs]
    except (ValueError, TypeError, IndexError, RecursionError):
        pass
    raise WorkerError(
        f"rank 0 of the {variant} group ended without its timings ({out.strip()[-80:]!r})"
    )


def scaling(
    variant: str, batch: int, ranks: int = 2, groups: int = GROUPS, pairs: int = PAIRS
) -> dict:
    """The figures of `variant` at `batch` images per process: images/s alone and together,
    the speed-up of the total with its 95% interval, and the scaling efficiency."""
    if pairs < 2:
        raise ConfigError(
            "--pairs must be at least 2: each ratio comes from a pair A B and a pair B A"
        )
    samples = Samples([run_group(variant, batch, ranks, pairs) for _ in range(groups)])
    # together's seconds per step over alone's, inverted: the rate of N ranks over one process's
    speedup = samples.ratio().inverted().scaled(ranks)
    return {
        "variant": variant,
        "batch_per_rank": batch,
        "ranks": ranks,
        "alone_images_per_s": batch / samples.arm(0).median,
        "together_images_per_s": ranks * batch / samples.arm(1).median,
        "speedup": speedup.as_dict(),
        "efficiency": speedup.median / ranks,
        "efficiency_ci": [speedup.low / ranks, speedup.high / ranks],
    }


if __name__ == "__main__":
    rank_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    end_rank(0)  # without the interpreter's finalization (end_rank says why)


def scale_all(
    variants: list[str], batches: list[int], ranks: int, groups: int, pairs: int, say
) -> list[dict]:
    """`scaling` of every variant at every batch size, each row said as it is measured, under
    a header and over a legend; a variant that cannot run under DDP is refused first."""
    for variant in variants:
        reason = unsupported(cases.VARIANTS[variant], "cpu", data_parallel=True)
        if reason:
            raise ConfigError(f"variant {variant} cannot run under DDP: {reason}")
    say(report.DDP_HEADER)
    rows = []
    for variant in variants:
        for batch in batches:
            rows.append(scaling(variant, batch, ranks, groups, pairs))
            say(report.format_ddp_row(rows[-1]))
    say(
        f"speed-up: total images/s of {ranks} ranks (one thread each, gloo) over one "
        "process's at the same batch per rank, the median over quads of paired rounds with "
        "its 95% interval over groups of fresh ranks; eff.: speed-up / ranks"
    )
    return rows

"""The DDP benchmark's rank: one process of a group that `bench_ddp` starts, its side alone.

`python -m cifar_spec.bench.ddp_rank VARIANT BATCH PAIRS`, in torchrun's environment
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Rank 0 times its two arms in paired
rounds and prints them as one JSON line; the other ranks follow its orders
(`bench_ddp` says what the figures mean).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from cifar_spec.bench import cases, measure
from cifar_spec.bench.paired import alternate
from cifar_spec.distributed.launch import end_rank
from cifar_spec.distributed.sharding import data_parallel_step
from cifar_spec.model import IMAGE_SHAPE, CifarNet
from cifar_spec.step import prepare_model


def build_arms(variant: str, batch: int, world: int) -> tuple[cases.StepBench, cases.StepBench]:
    """One process's step and this rank's DDP step, each on its own fixed random batch."""
    options = cases.VARIANTS[variant]
    alone = cases.build(options, "cpu", batch, seed=0)
    torch.manual_seed(0)
    model = prepare_model(CifarNet(), options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = data_parallel_step(model, optimizer, options)
    # Random pixels and labels, other on each rank, as DDP's ranks see other images.
    images = torch.rand(batch, *IMAGE_SHAPE)
    labels = torch.randint(0, 10, (batch,))
    snapshot = cases.Snapshot(model, optimizer)
    together = cases.StepBench(
        options,
        torch.device("cpu"),
        batch,
        model,
        lambda: step(images, labels, 1 / world),
        snapshot,
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


if __name__ == "__main__":
    rank_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    end_rank(0)  # without the interpreter's finalization (end_rank says why)

"""What each rank runs in tests/test_distributed.py: `distributed_ranks.py SCENARIO DIR DATA`.

The test starts one process per rank with torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) and reads what the ranks leave in DIR. Not a test module
itself: pytest collects test_*.py only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from cifar_spec.cifar10 import load_cifar10
from cifar_spec.data import to_device
from cifar_spec.distributed import launch
from cifar_spec.distributed.sharding import Shard, data_parallel_step
from cifar_spec.errors import PeerLost
from cifar_spec.loop import TrainConfig, fit
from cifar_spec.model import CifarNet
from cifar_spec.step import StepOptions, default_step, prepare_model

STEP_OPTIONS = {"eager": StepOptions(), "default": default_step("cpu", data_parallel=True)}
FIT = dict(epochs=2, limit=103, batch_size=4, shuffle=True)  # 25 batches of 4, then 2 + 1
TIMEOUT = 10.0  # seconds a rank waits for a silent one: short, so the spec stays quick


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Batches A (images 0-3) and B (4-7), the same on every rank and in the test, in float64:
    the test compares one step of two processes with one of a single process to float64's
    rounding, which no pooling tie breaks another way (tests/precision.py)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 32, 32, generator=generator)
    return images.double(), torch.randint(0, 10, (8,), generator=generator)


def steps(world: launch.World, out: Path) -> None:
    """One step on this rank's half of the global batch, then four more; what each left."""
    images, labels = global_batch()
    mine = slice(4 * world.rank, 4 * world.rank + 4)
    for name, options in STEP_OPTIONS.items():
        torch.manual_seed(0)
        model = prepare_model(CifarNet(), options).double()  # the float32 weights, in float64
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        step = data_parallel_step(model, optimizer, options)
        step(images[mine], labels[mine], 0.5)
        first = {
            "params": [p.detach().clone() for p in model.parameters()],
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        }
        for _ in range(4):
            step(images[mine], labels[mine], 0.5)
        first["later"] = [p.detach().clone() for p in model.parameters()]
        torch.save(first, out / f"steps-{name}-{world.rank}.pt")


def fits(world: launch.World, out: Path, data: Path) -> None:
    """fit with each step, then a run in one go and a run resumed after its first epoch."""
    split = to_device(load_cifar10(data, train=False))
    sums = {
        name: fit(TrainConfig(step=options, **FIT), split, log=None, world=world)
        for name, options in STEP_OPTIONS.items()
    }
    sums["whole"] = fit(TrainConfig(out=str(out / "whole"), **FIT), split, log=None, world=world)
    halted = dict(FIT, epochs=1)
    fit(TrainConfig(out=str(out / "resumed"), **halted), split, log=None, world=world)
    sums["resumed"] = fit(
        TrainConfig(out=str(out / "resumed"), **FIT), split, resume=True, log=None, world=world
    )
    (out / f"fits-{world.rank}.json").write_text(json.dumps(dict(sums, pid=os.getpid())))


def dies(world: launch.World, out: Path, data: Path, how: str) -> None:
    """Rank 1 is killed (or stopped) at its 4th step of epoch 2; rank 0 says what it saw."""
    split = to_device(load_cifar10(data, train=False))
    if world.rank == 1:
        calls = {"epoch": 0}
        batches = Shard.batches

        def fatal(self, *args, **kwargs):
            calls["epoch"] += 1
            for index, batch in enumerate(batches(self, *args, **kwargs)):
                if calls["epoch"] == 2 and index == 3:
                    (out / "gone.json").write_text(json.dumps({"at": time.time()}))
                    os.kill(os.getpid(), signal.SIGKILL if how == "killed" else signal.SIGSTOP)
                yield batch

        Shard.batches = fatal
    config = TrainConfig(epochs=3, limit=40, batch_size=4, out=str(out / "run"))
    try:
        fit(config, split, log=None, world=world)
    except PeerLost as error:
        (out / "seen.json").write_text(json.dumps({"at": time.time(), "error": str(error)}))
        raise SystemExit(2) from None


def main() -> None:
    scenario, out, data = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    world = launch.world_from_env(os.environ, "cpu", timeout=TIMEOUT)
    with launch.process_group(world):
        if scenario == "steps":
            steps(world, out)
        elif scenario == "fits":
            fits(world, out, data)
        else:
            dies(world, out, data, scenario)


if __name__ == "__main__":
    # Ended as the CLI ends a rank (launch.end_rank says why): at exit rank 0, which
    # keeps the store, was ended by std::terminate (SIGABRT) after writing its results, in
    # 1 of 4 runs of test_distributed.py under pytest -n 2, and 3 of 7 once it joined in a
    # thread (launch.join); in none of 5 since.
    try:
        main()
    except SystemExit as stop:
        launch.end_rank(stop.code if isinstance(stop.code, int) else 1)
    launch.end_rank(0)

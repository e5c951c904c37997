"""Sharding and DDP: each rank's part of every global batch, and its gradient's weight.

Every rank holds the whole split on its device and draws the same order each
epoch (from the seeded generator, as one process does); from each global batch
it takes its own contiguous part (``Shard``). So the union of the parts is the
split, once per epoch, and each step sees exactly the images one process would
see at the same global batch size.

A rank's gradient counts in proportion to its images, so the summed gradient is
the mean over the global batch, as one process computes it, also in a last batch
that does not split evenly. Each part carries that weight (``Part.weight``) to the
step, which hands it to the all-reduce of its own backward (``Weight``): the
autograd step is wrapped in ``DistributedDataParallel``, whose comm hook applies
the weight before its all-reduce; the manual backward has no autograd for DDP to
hook into, so it all-reduces its one flat gradient itself (``sum_gradients``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cifar_spec.data import DeviceData
from cifar_spec.distributed.launch import World
from cifar_spec.errors import DistributedError
from cifar_spec.step import StepOptions, make_step

# The data-parallel step: one rank's part of a batch, and its weight, to its weighted loss.
WeightedStep = Callable[[Tensor, Tensor, float], Tensor]


def check_batch_size(batch_size: int, world: World) -> None:
    if batch_size % world.size:
        raise DistributedError(
            f"--batch-size {batch_size} (images per step over all processes) does not divide "
            f"among {world.size} processes; pass a multiple of {world.size}"
        )


def split(count: int, rank: int, size: int) -> slice:
    """Rank `rank`'s contiguous part of `count` images shared by `size` ranks, as even as can be."""
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Part(NamedTuple):
    """This rank's part of one global batch, and the weight of its gradient in that batch."""

    images: Tensor
    labels: Tensor
    weight: float  # its images / the global batch's images; 0 for a stand-in image


@dataclass(frozen=True)
class Shard:
    """This rank's part of every global batch."""

    world: World

    def batches(
        self, data: DeviceData, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[Part]:
        """This rank's part of each of `data.batches(batch_size, generator)`'s batches, in order.

        Draws the same order from `generator` as `DeviceData.batches`, so every
        rank, and a single process, walks the same global batches.
        """
        n = len(data)
        order = None
        if generator is not None:
            order = torch.randperm(n, generator=generator).to(data.labels.device)
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            part = split(count, self.world.rank, self.world.size)
            weight = (part.stop - part.start) / count
            if weight == 0:
                # A last batch smaller than the world leaves this rank nothing, yet it must
                # join the all-reduce: one image, weighted 0, adds nothing to the gradient.
                part = slice(0, 1)
            index = slice(start + part.start, start + part.stop)
            if order is not None:
                index = order[index]
            yield Part(data.images[index], data.labels[index], weight)

    def images(self, n: int, batch_size: int) -> int:
        """How many of an epoch's `n` images this rank trains on."""
        full, rest = divmod(n, batch_size)
        last = split(rest, self.world.rank, self.world.size)
        return full * (batch_size // self.world.size) + last.stop - last.start

    def total(self, losses: Tensor) -> Tensor:
        """The global loss of each step: every rank's weighted losses summed."""
        losses = losses.to(torch.float64)
        dist.all_reduce(losses)
        return losses


@dataclass
class Weight:
    """The weight of the part the data-parallel step is taking: set by that step before its
    backward, read by the all-reduce inside it (DDP's comm hook, or `sum_gradients`)."""

    value: float = 1.0


def weighted_sum_hook(weight: Weight, bucket):  # untyped: DDP rejects a string annotation
    """DDP's all-reduce with each rank's gradient weighted by its share of the batch.

    DDP's own hook averages (divides by the world size), which is the mean over
    the global batch only when every rank has as many images; this is exact always.
    """
    buffer = bucket.buffer().mul_(weight.value)
    work = dist.all_reduce(buffer, async_op=True)
    return work.get_future().then(lambda done: done.value()[0])


def data_parallel(model: nn.Module, weight: Weight) -> nn.Module:
    """`model` in DDP (which broadcasts rank 0's parameters), its gradients weighted and summed."""

    device = next(model.parameters()).device
    wrapped = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    wrapped.register_comm_hook(weight, weighted_sum_hook)
    return wrapped


def broadcast_parameters(model: nn.Module) -> None:
    """Rank 0's parameters on every rank, as DDP's constructor does for the autograd step."""
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p, src=0)


def sum_gradients(weight: Weight) -> Callable[[list[Tensor]], list[Tensor]]:
    """For the manual backward: its gradients, weighted and summed over ranks in one call."""

    def reduce(grads: list[Tensor]) -> list[Tensor]:
        # One flat buffer, one all-reduce: the whole model (582 KB) is one DDP bucket too.
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(weight.value)
        dist.all_reduce(flat)
        return [
            part.view(g.shape) for part, g in zip(flat.split([g.numel() for g in grads]), grads)
        ]

    return reduce


def data_parallel_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, options: StepOptions
) -> WeightedStep:
    """One rank's step on its part of a batch and that part's weight (`Part`): its gradients
    weighted and summed with the others' before the update.

    It returns its loss times the weight, so that the ranks' sum (`Shard.total`)
    is the mean loss over the global batch. It never checks the loss itself: a
    rank that stopped alone would leave the others waiting in the all-reduce;
    the epoch checks the summed losses on every rank alike.
    """
    current = Weight()
    if options.manual_backward:
        broadcast_parameters(model)
        step = make_step(
            model, optimizer, options, check_finite=False, sum_gradients=sum_gradients(current)
        )
    else:
        step = make_step(data_parallel(model, current), optimizer, options, check_finite=False)

    def weighted(images: Tensor, labels: Tensor, weight: float) -> Tensor:
        current.value = weight  # for the all-reduce in this step's backward, and no other
        return step(images, labels) * weight

    return weighted

"""Run-wide agreement: what every rank must hear before the first step, or stop on together.

A task only some ranks do must not fail alone (``together``); rank 0's value
reaches every rank (``from_leader``); and before the first step ``agree`` stops
every rank unless all were launched with rank 0's settings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import torch.distributed as dist

from cifar_spec.distributed.launch import World, is_lost_peer
from cifar_spec.errors import DistributedError, PeerLost, StoppedElsewhere

T = TypeVar("T")


@contextmanager
def before_training() -> Iterator[None]:
    """A rank lost in an exchange before the first step: PeerLost, in one line, not gloo's."""
    try:
        yield
    except RuntimeError as error:
        if not is_lost_peer(error):
            raise
        raise PeerLost(
            "another process of the run died or stopped answering before training began "
            f"({str(error).strip().splitlines()[0][:200]}); nothing was saved"
        ) from None


def together(world: World, work: Callable[[], T], here: bool) -> T | None:
    """`work()` where `here` holds, then every rank learns whether it failed anywhere.

    A task only some ranks do (rank 0 locking the run folder, say) must not
    fail alone: the other ranks would wait in their next exchange until the
    timeout. Here a failure stops every rank: its own error where it happened,
    StoppedElsewhere naming it on the others.
    """
    result, error = None, None
    if here:
        try:
            result = work()
        except Exception as caught:  # re-raised below, after the others have heard of it
            error = caught
    messages: list[str | None] = [None] * world.size
    with before_training():
        dist.all_gather_object(messages, None if error is None else str(error))
    if error is not None:
        raise error
    for rank, message in enumerate(messages):
        if message is not None:
            raise StoppedElsewhere(f"rank {rank} stopped the run: {message}")
    return result


def from_leader(world: World, value: T | None) -> T:
    """Rank 0's `value`, on every rank."""
    box = [value]
    with before_training():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def shown(value: object) -> str:
    return "unset" if value is None else str(value)


def ranks_named(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if len(ranks) > 4:
        return f"ranks {', '.join(map(str, ranks[:3]))} and {len(ranks) - 3} more"
    return f"ranks {', '.join(map(str, ranks[:-1]))} and {ranks[-1]}"


def difference(name: str, values: list[object]) -> str:
    """`name` on rank 0, then each other value with the ranks that have it (three at most)."""
    elsewhere: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        if value != values[0]:
            elsewhere.setdefault(shown(value), []).append(rank)
    kinds = list(elsewhere.items())
    others = ", ".join(f"{value} on {ranks_named(ranks)}" for value, ranks in kinds[:3])
    more = ", and others on other ranks" if len(kinds) > 3 else ""
    return f"{name} is {shown(values[0])} on rank 0 but {others}{more}"


def agree(world: World, settings: Mapping[str, object]) -> None:
    """Return only if every rank was launched with rank 0's `settings`; else stop each rank.

    Ranks that differ (another --lr, --limit, data set) would train on, each its own
    run, their sums mixed, or meet different exchanges and fail deep inside one.
    One gather before the first step finds it; every rank raises the same message.
    """
    gathered: list[dict | None] = [None] * world.size
    with before_training():
        dist.all_gather_object(gathered, dict(settings))
    names = list(dict.fromkeys(name for each in gathered for name in each))
    differences = [
        difference(name, [each.get(name) for each in gathered])
        for name in names
        if any(each.get(name) != gathered[0].get(name) for each in gathered)
    ]
    if differences:
        raise DistributedError(
            "the ranks were launched with different settings: "
            + "; ".join(differences)
            + "; launch every rank with the same arguments"
        )

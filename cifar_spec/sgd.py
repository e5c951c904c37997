"""Plain SGD: when its update is p -= lr * grad alone, and that update without optimizer.step().

Both faster steps update this way instead of calling `optimizer.step()`: the
autograd step with ``one_call_sgd`` (from each ``.grad``) and the manual
backward (from the gradients it computes, which never reach ``.grad``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def is_plain_sgd(optimizer: torch.optim.Optimizer | None) -> bool:
    """SGD whose update is p -= lr * grad and nothing else: no momentum, decay or maximize."""
    return type(optimizer) is torch.optim.SGD and not any(
        g["momentum"] or g["weight_decay"] or g["maximize"] or g["nesterov"]
        for g in optimizer.param_groups
    )


def sgd_update(optimizer: torch.optim.SGD, grads: Sequence[list[Tensor]] | None = None) -> None:
    """Plain SGD's update of every param group, each at its own lr, without optimizer.step().

    `grads[i]` holds the gradients of group i's parameters, in the group's
    order; without `grads`, each parameter's ``.grad`` (one without is left
    alone, as ``optimizer.step()`` leaves it). At batch 1 on a CPU,
    `SGD.step()` spends ~0.35 ms of a ~4 ms step in Python (hooks, option
    lookups) around ten additions; this is the same arithmetic, so the
    parameters come out bit for bit the same (tests/test_step.py). It reads lr
    on every call, so schedulers work. Call it under ``torch.no_grad()``: the
    parameters are leaves that require grad.
    """
    for index, group in enumerate(optimizer.param_groups):
        if grads is None:
            params = [p for p in group["params"] if p.grad is not None]
            group_grads = [p.grad for p in params]
        else:
            params, group_grads = group["params"], grads[index]
        torch._foreach_add_(params, group_grads, alpha=-group["lr"])

"""One training step of the tutorial, in the tutorial's order, with its inputs checked.

The tutorial's inner loop is: forward, loss, ``zero_grad()``, ``backward()``,
``step()``. ``train_step`` does exactly that and returns the loss detached from
the graph, so that a caller who sums losses over an epoch (as the tutorial
does) does not keep every step's autograd graph alive.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cifar_spec.model import NUM_CLASSES, check_images

LossFn = Callable[[Tensor, Tensor], Tensor]


def check_labels(labels: Tensor, num_images: int, num_classes: int = NUM_CLASSES) -> None:
    """Raise unless `labels` are int64 class indices in [0, num_classes), one per image.

    The range check reads the values, which on an accelerator would stall the
    host for every batch; so it runs only for labels still on the CPU. Labels
    already on a device were checked once, when the data set was moved there.
    """
    if labels.dtype != torch.long:
        raise TypeError(
            f"labels must be class indices of dtype torch.int64, got {labels.dtype}; "
            "convert with labels.long()"
        )
    if labels.shape != (num_images,):
        raise ValueError(
            f"expected one label per image, shape ({num_images},), got {tuple(labels.shape)}"
        )
    if labels.device.type == "cpu" and labels.numel() > 0:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes}), got values from {low} to {high}"
            )


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_step(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
) -> Tensor:
    """One step: forward, loss, zero_grad, backward, step. Returns the detached loss."""
    check_images(images)
    check_labels(labels, images.shape[0])
    device = model_device(model)
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    loss = loss_fn(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()

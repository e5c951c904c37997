"""The manual backward: the tutorial's training step with its backward pass written out.

Autograd records a graph on every forward and walks it on every backward. At
batch 1 on a CPU that bookkeeping costs about a quarter of a 3-4 ms step. For
this one network the backward is short enough to write down: the same aten
kernels autograd would call, in the same order, so the result is the same to
float32 rounding (tests/test_manual_backward.py checks it against autograd). It is
also the backward pass spelled out, for a reader who wants to see it.

It applies to `CifarNet` with cross-entropy and plain SGD, nothing else
(`step.unsupported` says so). It never fills `.grad`: the gradients go
straight into the one-call SGD update. The tutorial's
claims about `.grad` hold for the autograd step (`train_step`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from cifar_spec.model import CifarNet, check_images
from cifar_spec.sgd import sgd_update

aten = torch.ops.aten
ONE, PAD, ZERO, POOL = [1, 1], [2, 2], [0, 0], [2, 2]  # conv stride, padding; pool window
LAYERS = (
    nn.Conv2d,
    nn.MaxPool2d,
    nn.Conv2d,
    nn.MaxPool2d,
    nn.Conv2d,
    nn.MaxPool2d,
    nn.Flatten,
    nn.Linear,
    nn.Linear,
)


def applies_to(model: nn.Module) -> bool:
    """Whether `model` is CifarNet with the tutorial's layers, the only network written out here."""
    kinds = tuple(type(layer) for layer in getattr(model, "layers", []))
    return type(model) is CifarNet and kinds == LAYERS


def updates_all(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's param groups hold exactly the model's parameters, each once."""
    held = [id(p) for group in optimizer.param_groups for p in group["params"]]
    return sorted(held) == sorted(id(p) for p in model.parameters())


def group_positions(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[int]]:
    """For each param group, where its parameters stand in `model.parameters()`, in its order."""
    position = {id(p): i for i, p in enumerate(model.parameters())}
    return [[position[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def conv_forward(x: Tensor, conv: nn.Conv2d) -> Tensor:
    return aten.convolution(x, conv.weight, conv.bias, ONE, PAD, ONE, False, ZERO, 1)


def conv_backward(grad: Tensor, x: Tensor, conv: nn.Conv2d, need_input: bool) -> tuple:
    """(d input or None, d weight, d bias) of a 5x5 convolution with padding 2."""
    return aten.convolution_backward(
        grad,
        x,
        conv.weight,
        [conv.out_channels],
        ONE,
        PAD,
        ONE,
        False,
        ZERO,
        1,
        [need_input, True, True],
    )


def make_manual_backward_step(
    model: CifarNet,
    optimizer: torch.optim.SGD,
    check_finite: Callable[[Tensor], None],
    sum_gradients: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """`step(images, labels) -> loss`: forward, loss, backward by hand, the one-call SGD update.

    `step.make_step` builds it after `step.unsupported` has found the model,
    optimizer and loss to be the ones written out here. Under data parallelism
    `sum_gradients` sums the gradients over processes before the update. The
    gradients come in `model.parameters()` order; each param group gets its own.
    """
    conv1, _, conv2, _, conv3, _, _, fc1, fc2 = model.layers
    positions = group_positions(model, optimizer)

    @torch.no_grad()
    def step(images: Tensor, labels: Tensor) -> Tensor:
        check_images(images, conv1.weight.dtype)  # float32, or float64 for a reference run
        images = images.contiguous(memory_format=suggest_format(conv1.weight))
        n = images.shape[0]
        a1 = conv_forward(images, conv1)  # (N, 32, 32, 32)
        p1, i1 = aten.max_pool2d_with_indices(a1, POOL, POOL)  # (N, 32, 16, 16)
        a2 = conv_forward(p1, conv2)
        p2, i2 = aten.max_pool2d_with_indices(a2, POOL, POOL)  # (N, 32, 8, 8)
        a3 = conv_forward(p2, conv3)
        p3, i3 = aten.max_pool2d_with_indices(a3, POOL, POOL)  # (N, 64, 4, 4)
        flat = p3.reshape(n, -1)  # (N, 1024)
        hidden = torch.addmm(fc1.bias, flat, fc1.weight.t())  # (N, 64)
        logits = torch.addmm(fc2.bias, hidden, fc2.weight.t())  # (N, 10)
        log_p = torch.log_softmax(logits, 1)
        loss = -log_p.gather(1, labels[:, None]).mean()
        check_finite(loss)
        # d(mean cross-entropy)/d logits = (softmax - one-hot) / N
        d_logits = log_p.exp()  # (N, 10)
        d_logits[torch.arange(n, device=labels.device), labels] -= 1
        d_logits /= n
        d_hidden = d_logits @ fc2.weight  # (N, 64)
        d_flat = (d_hidden @ fc1.weight).view(p3.shape)  # (N, 64, 4, 4), NCHW order
        d_a3 = aten.max_pool2d_with_indices_backward(
            d_flat.contiguous(memory_format=suggest_format(p3)),
            a3,
            POOL,
            POOL,
            ZERO,
            ONE,
            False,
            i3,
        )
        d_p2, d_w3, d_b3 = conv_backward(d_a3, p2, conv3, need_input=True)
        d_a2 = aten.max_pool2d_with_indices_backward(d_p2, a2, POOL, POOL, ZERO, ONE, False, i2)
        d_p1, d_w2, d_b2 = conv_backward(d_a2, p1, conv2, need_input=True)
        d_a1 = aten.max_pool2d_with_indices_backward(d_p1, a1, POOL, POOL, ZERO, ONE, False, i1)
        _, d_w1, d_b1 = conv_backward(d_a1, images, conv1, need_input=False)  # no d images
        grads = [
            d_w1,
            d_b1,
            d_w2,
            d_b2,
            d_w3,
            d_b3,
            d_hidden.t() @ flat,
            d_hidden.sum(0),
            d_logits.t() @ hidden,
            d_logits.sum(0),
        ]
        if sum_gradients is not None:
            grads = sum_gradients(grads)
        sgd_update(optimizer, [[grads[i] for i in group] for group in positions])
        return loss

    return step


def suggest_format(t: Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        else torch.contiguous_format
    )

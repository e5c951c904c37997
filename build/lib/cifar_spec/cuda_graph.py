"""The whole training step captured once as a CUDA graph and replayed.

One replay launches the whole step (about 30 kernels) at once, which is what
makes batch 1 fast on a GPU: the host no longer paces the kernels. It captures
the one-call SGD update, whose only state is the parameters themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Step = Callable[[Tensor, Tensor], Tensor]
Captured = tuple[Tensor, Tensor, Tensor, torch.cuda.CUDAGraph]  # images, labels, loss, graph


def capture(step: Step, model: nn.Module, images: Tensor, labels: Tensor) -> Captured:
    """Warm up on a side stream (cuDNN picks its kernels there), undo it, then capture.

    Plain SGD keeps no state besides the parameters, so restoring them undoes
    the warm-up completely, also when the warm-up or the capture fails.
    """
    static_images, static_labels = images.clone(), labels.clone()
    saved = [p.detach().clone() for p in model.parameters()]
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step(static_images, static_labels)
        torch.cuda.current_stream().wait_stream(side)
    finally:
        with torch.no_grad():  # the warm-up steps must not count as training
            for p, value in zip(model.parameters(), saved):
                p.copy_(value)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(static_images, static_labels)
    return static_images, static_labels, static_loss, graph


def cuda_graphed(step: Step, model: nn.Module, optimizer: torch.optim.Optimizer) -> Step:
    """`step`, captured once per batch shape (and learning rate) as a CUDA graph and replayed.

    The learning rate is baked into the captured update, so a new one (from a
    scheduler, say) gets a graph of its own.
    """
    graphs: dict[tuple, Captured] = {}

    def replay(images: Tensor, labels: Tensor) -> Tensor:
        key = (
            tuple(images.shape),
            tuple(labels.shape),
            tuple(group["lr"] for group in optimizer.param_groups),
        )
        with torch.cuda.device(images.device):  # streams and graph on the data's GPU
            if key not in graphs:
                graphs[key] = capture(step, model, images, labels)
            static_images, static_labels, static_loss, graph = graphs[key]
            static_images.copy_(images)
            static_labels.copy_(labels)
            graph.replay()
            return static_loss.clone()  # the next replay overwrites static_loss

    return replay

"""The tutorial's own training code, kept as it is written, to measure the library against.

The spec checks that ``fit`` reproduces this loop's loss sums, and the
benchmarks time both on the same images. Its one change is ``.item()`` on the
running sum: the original adds tensors and so keeps every step's graph alive.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import ToTensor

from cifar_spec.cifar10 import load_cifar10
from cifar_spec.model import CifarNet


def tutorial_setup(root: str | Path, n_images: int, seed: int = 0) -> tuple:
    """(model, loader, loss, optim) as the tutorial builds them, on the test split under `root`.

    The split is torchvision's CIFAR10, read after the safe checks of
    `load_cifar10`, with the tutorial's ToTensor() transform.
    """
    dataset = load_cifar10(root, train=False)
    dataset.transform = ToTensor()
    loader = DataLoader(Subset(dataset, range(n_images)), batch_size=1)
    torch.manual_seed(seed)
    model = CifarNet()
    return model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01)


def tutorial_epoch(
    model: nn.Module, loader: DataLoader, loss: nn.Module, optim: torch.optim.Optimizer
) -> float:
    """One epoch of the tutorial's loop; returns its loss sum."""
    loss_sum = 0.0
    for imgs, targets in loader:
        outputs = model(imgs)
        result_loss = loss(outputs, targets)
        optim.zero_grad()
        result_loss.backward()
        optim.step()
        loss_sum += result_loss.item()
    return loss_sum

"""A split held on the training device: converted once, batched by indexing.

``DeviceData`` holds a whole split as one float tensor on the training device:
converted once, batched by indexing, shuffled by a seeded generator. That takes
the per-sample ``DataLoader`` work out of the training loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from cifar_spec.synthetic import synthetic_settings

if TYPE_CHECKING:  # torchvision takes seconds to import; converting a split needs none of it
    from torchvision.datasets import CIFAR10


def describe_split(dataset: CIFAR10) -> str:
    """Which data this is, as a checkpoint keeps it: the split and, if synthetic, its settings."""
    split = "train split" if dataset.train else "test split"
    settings = synthetic_settings(dataset.root)
    if settings is None:
        return f"the CIFAR-10 {split}"
    return (
        f"the synthetic {split} (seed {settings['seed']}, signal {settings['signal']}, "
        f"{settings['n_train']} train and {settings['n_test']} test images)"
    )


@dataclass(frozen=True)
class DeviceData:
    """A whole split on one device: images (N, 3, 32, 32) float in [0, 1], labels (N,) int64."""

    images: Tensor
    labels: Tensor
    split: str = "unnamed data"  # which data this is, as describe_split says it

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> DeviceData:
        return replace(self, images=self.images[:n], labels=self.labels[:n])

    def to(self, device: str | torch.device) -> DeviceData:
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def record(self) -> dict:
        """What a checkpoint keeps of the data it trained on, to refuse resuming on other data."""
        labels = self.labels.cpu().numpy().astype("<i8").tobytes()
        return {
            "split": self.split,
            "images": len(self),
            "labels_sha256": hashlib.sha256(labels).hexdigest()[:16],
        }

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches in order, or in a random order drawn from `generator` when one is given."""
        n = len(self)
        if generator is None:
            for start in range(0, n, batch_size):
                yield (
                    self.images[start : start + batch_size],
                    self.labels[start : start + batch_size],
                )
            return
        order = torch.randperm(n, generator=generator).to(self.labels.device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield self.images[index], self.labels[index]


def to_device(
    dataset: CIFAR10, device: str | torch.device = "cpu", limit: int | None = None
) -> DeviceData:
    """Convert once, exactly as ToTensor() does (HWC uint8 -> CHW float / 255), and move."""
    data, labels = dataset.data, dataset.targets
    if limit is not None:
        data, labels = data[:limit], labels[:limit]
    images = torch.from_numpy(np.ascontiguousarray(data)).to(device)  # (N, 32, 32, 3) uint8
    images = images.permute(0, 3, 1, 2).contiguous().float().div(255)  # (N, 3, 32, 32)
    labels = torch.tensor(labels, dtype=torch.long, device=device)
    return DeviceData(images, labels, describe_split(dataset))

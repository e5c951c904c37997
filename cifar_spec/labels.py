"""The labels and batches a step can learn from, checked before anything reaches a device."""

from __future__ import annotations

import torch
from torch import Tensor

from cifar_spec.model import NUM_CLASSES, check_images


def check_labels(labels: Tensor, num_images: int, num_classes: int = NUM_CLASSES) -> None:
    """Raise unless `labels` are int64 class indices in [0, num_classes), one per image.

    The range check reads the values, which on an accelerator would stall the
    host for every batch; so it runs only for labels still on the CPU. `fit`
    checks a whole data set once, before it moves it to the device.
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


def check_batch(images: Tensor, labels: Tensor, dtype: torch.dtype = torch.float32) -> None:
    """Refuse a batch no step can learn from, before anything reaches a device."""
    check_images(images, dtype)
    if images.shape[0] == 0:
        # The mean over no images is 0/0: the step would report "loss is nan".
        raise ValueError("the batch is empty: a step needs at least one image")
    check_labels(labels, images.shape[0])

"""The memory a training run needs, measured against what is free before anything is allocated."""

from __future__ import annotations

import torch

# Bytes one image costs a training step: the float32 activations autograd keeps
# (conv1 32x32x32, pool 32x16x16, conv2 32x16x16, pool 32x8x8, conv3 64x8x8,
# pool 64x4x4, fc 64 + 10: 56,394 floats), their gradients, and as much again
# for the kernels' workspaces and the pooling indices, rounded up.
STEP_BYTES_PER_IMAGE = 4 * 56_394 * 4
IMAGE_BYTES = 4 * 3 * 32 * 32  # one float32 image held on the device


def free_memory(device: torch.device) -> int:
    """Bytes free for tensors on `device` now."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # not Linux: no estimate to refuse on


def memory_shortfall(batch_size: int, num_images: int, device: str | torch.device) -> str | None:
    """Why a run's data and one step cannot fit in the free memory of `device`, or None.

    The reason only: the caller says which of its settings to lower (`loop.check_memory`).
    """
    device = torch.device(device)
    batch = min(batch_size, num_images)
    needed = num_images * IMAGE_BYTES + batch * STEP_BYTES_PER_IMAGE
    free = free_memory(device)
    if needed <= free:
        return None
    return (
        f"batch size {batch_size} on {num_images} images needs about {needed / 2**30:.1f} GiB, "
        f"more than the {free / 2**30:.1f} GiB free on {device.type}"
    )

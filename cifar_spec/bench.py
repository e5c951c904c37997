"""The cases every benchmark measures: which variants of the step, at which batch sizes.

A case is one variant of the training step (`StepOptions`) on one device at
one batch size, built on one fixed random batch and ready to run. `measure.py`
times it, `figures.py` says what the time means, `gate.py` and `compare.py`
judge it; `worker.py` builds cases in fresh processes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cifar_spec.model import IMAGE_SHAPE, CifarNet
from cifar_spec.train import StepOptions, make_step, prepare_model

# The variants every benchmark run measures, by name; "eager" (the tutorial's step)
# is the baseline.
VARIANTS = {v.name: v for v in [
    StepOptions(),
    StepOptions(channels_last=True),
    StepOptions(channels_last=True, manual_backward=True),  # the library's default on a CPU
    StepOptions(bf16=True),
    StepOptions(channels_last=True, bf16=True),
    StepOptions(compile=True),
    StepOptions(channels_last=True, cuda_graph=True),  # the library's default on a GPU
    StepOptions(channels_last=True, bf16=True, cuda_graph=True),
]}
BATCHES = {"cpu": [1, 64, 256], "cuda": [1, 256, 1024, 4096]}


def unsupported(options: StepOptions, device: str | torch.device) -> str | None:
    """Why `options` cannot run on `device` here, or None when it can."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if options.cuda_graph and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if options.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bfloat16 support"
    if options.bf16 and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # Emulated, a bfloat16 step is 8-20x slower than float32 (measured on a Zen 1 EPYC):
        # timing it says nothing about bfloat16 and costs minutes.
        return "this CPU has no native bfloat16 (AVX512-BF16 or AMX); torch would emulate it"
    if options.compile:
        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python or platform"
        if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
            return "torch.compile on the CPU needs a C++ compiler on PATH"
    return None


@dataclass
class StepBench:
    """One variant's training step on one fixed random batch, ready to time."""

    options: StepOptions
    device: torch.device
    batch: int
    model: nn.Module
    step: Callable[[], torch.Tensor]

    def steps(self, n: int) -> torch.Tensor:
        for _ in range(n):
            loss = self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss


def build(options: StepOptions, device: str | torch.device, batch: int, seed: int = 0) -> StepBench:
    device = torch.device(device)
    torch.manual_seed(seed)
    model = prepare_model(CifarNet().to(device), options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = make_step(model, optimizer, options, check_finite=False)
    # Random pixels and labels: zeros would let kernels skip work they do on real data.
    images = torch.rand(batch, *IMAGE_SHAPE, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    return StepBench(options, device, batch, model, lambda: step(images, labels))


def precision(options: StepOptions) -> torch.dtype:
    return torch.bfloat16 if options.bf16 else torch.float32


# Whole loops at the tutorial's settings (batch 1, float32, CPU): the tutorial's own
# (DataLoader, PIL images, ToTensor() on every image) against fit's (one tensor, the
# fast exact step). One "step" of a loop case is an epoch of LOOP_IMAGES images.
LOOPS = {"tutorial loop": "the tutorial's own loop", "fit loop": "fit's loop, the library's default"}
LOOP_BASELINE = "tutorial loop"
LOOP_IMAGES = 100


@dataclass
class LoopBench:
    """One epoch of a training loop over LOOP_IMAGES synthetic images, ready to time."""

    name: str
    device: torch.device
    images: int
    step: Callable[[], float]


def build_loop(name: str, root: str) -> LoopBench:
    """The loop `name` on the synthetic test split under `root` (written there if missing).

    Imports torchvision (through data.py), which a step case never needs.
    """
    from cifar_spec.data import is_synthetic, load_cifar10, to_device, write_synthetic_cifar10
    from cifar_spec.train import TrainConfig, new_run, train_epoch
    from cifar_spec.tutorial import tutorial_epoch, tutorial_setup

    if not is_synthetic(root):
        write_synthetic_cifar10(root, n_train=5, n_test=LOOP_IMAGES)
    if name == "tutorial loop":
        model, loader, loss, optim = tutorial_setup(root, LOOP_IMAGES)
        epoch = lambda: tutorial_epoch(model, loader, loss, optim)  # noqa: E731
    elif name == "fit loop":
        run = new_run(TrainConfig())  # the defaults: the tutorial's settings, the fast exact step
        data = to_device(load_cifar10(root, train=False))
        epoch = lambda: train_epoch(run.step, data, 1, epoch=1)  # noqa: E731
    else:
        raise ValueError(f"no loop {name!r}; the loops are {', '.join(LOOPS)}")
    return LoopBench(name, torch.device("cpu"), LOOP_IMAGES, epoch)

"""How the spec compares two training runs, and why each float tolerance is what it is.

CifarNet's only nonlinearity is max-pooling, which sends each window's gradient to its
largest input. Where two inputs of a window lie within float32 rounding of each other,
another kernel (channels_last, AVX-512 or AVX2, oneDNN's other ISA, another thread count,
inductor's code) can round them the other way: the gradient goes to the other input and the
two runs part from that step on. Over 200 batch-1 steps on the stand-in, 20 of the 2.25
million windows lie within 1e-6 of their layer's largest input (measured in float64), and
float32 kernels differ by up to 2e-6 there: a long float32 run meets such a tie about once
a hundred steps. Its effect on the loss sums (up to 3.3e-5 over 600 steps, measured under
the 19 dispatch settings of a Zen 4) is the size of a real bug's: a learning rate 1% off moves
the same sums by 6.5e-5 to 9.2e-5. No float32 tolerance on a long run tells the two apart
(benchmarks/RESULTS.md, 2026-12-04, has the figures).

So the spec compares like with like (docs/tolerances.md has the table):
- the *math* of a long run in float64 (`float64_sums`, `FLOAT64`), where a tie would need
  two inputs within 1e-15 of each other;
- the *float32 kernels* on one step from the same weights, on inputs whose every pooling
  window is decided by a margin no float32 kernel crosses (`decided_batch`, `FLOAT32_STEP`);
- float32 runs of many steps only where what the test looks for is far larger than a tie's
  effect (`FLOAT32_LONG_RUN`).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from cifar_spec.data import DeviceData
from cifar_spec.loop import TrainConfig, new_run, train_epoch
from cifar_spec.model import CifarNet
from cifar_spec.step import StepOptions

# Two float64 runs of the same math, up to 600 steps: their sums differ by at most 2.5e-16
# (two units of float64's rounding, 1.1e-16; every variant, measured), one step's gradients
# and parameters by a few units of it. 1e-12 leaves 4,000 times that for kernels not seen
# here, and is 8,000 times below what a learning rate 0.1% off does to the sums (8e-6); the
# absolute 1e-14 is for gradients near zero, a hundred units of float64's rounding of 1e-2.
FLOAT64 = {"rtol": 1e-12, "atol": 1e-14}

# One float32 step of two kernels from the same weights, every pooling window decided, on
# the loss and the parameters after it. The loss is a few thousand roundings of 2^-24 deep,
# which random signs keep near sqrt(n) * 6e-8, ~4e-6 relative: rtol 1e-5. A parameter (< 0.25)
# lands within a unit or two of float32's rounding, 1.5e-8, plus lr (0.01) times its
# gradient's rounding: atol 1e-6 is sixty units, while a wrong or missing term moves it by
# lr * grad, ~1e-4. (benchmarks/RESULTS.md has how much of this was used.)
FLOAT32_STEP = {"rtol": 1e-5, "atol": 1e-6}

# A pooling window whose two largest inputs lie closer than this, relative to the largest
# input of its layer, could be decided either way by two float32 kernels: each differs from
# float64 there by up to 2e-6 of that largest input (measured at init under 6 dispatches
# and 2 thread counts), so two of them by up to 4e-6. 2e-5 is five times that.
POOLING_MARGIN = 2e-5

# Many float32 steps, where what the test looks for moves the loss sums by 2.6e-3 or more (a
# shard of every batch lost: 2.6e-3; counted twice: 9e-3, measured): the pooling ties above
# move them by up to 3.3e-5. 5e-4 is fifteen times the one and a fifth of the other.
FLOAT32_LONG_RUN = {"rtol": 5e-4, "atol": 0.0}


def float64_sums(
    data: DeviceData, options: StepOptions, epochs: int, limit: int, batch_size: int, lr: float
) -> list[float]:
    """Per-epoch loss sums of `fit`'s run with `options`, taken to float64 after the float32
    initialisation: every variant starts from the very same weights."""
    config = TrainConfig(epochs=epochs, limit=limit, batch_size=batch_size, lr=lr, step=options)
    run = new_run(config)
    run.model.double()  # the same Parameter objects, which the step and optimizer hold
    data = DeviceData(data.images[:limit].double(), data.labels[:limit])
    return [train_epoch(run.step, data, batch_size, epoch) for epoch in range(1, epochs + 1)]


def pooling_margins(model: nn.Module, images: Tensor) -> Tensor:
    """(N,): for each image, the smallest gap, computed in float64, between the two largest
    inputs of any max-pooling window of `model`, relative to the largest input of that layer."""
    margins = torch.full((len(images),), torch.inf, dtype=torch.float64)

    def measure(layer: nn.Module, inputs: tuple, output: Tensor) -> None:
        x = inputs[0]  # (N, C, H, W)
        windows = nn.functional.unfold(x.flatten(0, 1).unsqueeze(1), 2, stride=2)  # (N*C, 4, L)
        top = windows.topk(2, dim=1).values  # (N*C, 2, L)
        gaps = (top[:, 0] - top[:, 1]).view(len(x), -1).amin(1)  # (N,)
        margins.copy_(torch.minimum(margins, gaps / x.flatten(1).abs().amax(1)))

    reference = CifarNet()
    reference.load_state_dict(model.state_dict())
    reference.double()
    for layer in reference.modules():
        if isinstance(layer, nn.MaxPool2d):
            layer.register_forward_hook(measure)
    with torch.no_grad():
        reference(images.double())
    return margins


@functools.cache
def decided_batch(batch: int) -> tuple[Tensor, Tensor]:
    """`batch` random images whose every pooling window CifarNet's seed-0 weights decide by
    more than POOLING_MARGIN, the first such of a seeded stream, and random labels: one step
    on them routes each gradient alike under any float32 kernel. The search runs in float64,
    so it finds the same images on every machine; it runs once a process, and leaves torch's
    global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CifarNet()
    data = torch.Generator().manual_seed(0)
    candidates = torch.rand(16 * batch, 3, 32, 32, generator=data)  # about 1 in 5 is decided
    decided = candidates[pooling_margins(model, candidates) > POOLING_MARGIN][:batch]
    assert len(decided) == batch, f"fewer than {batch} of {len(candidates)} images decided"
    return decided, torch.randint(0, 10, (batch,), generator=data)


def tolerance_used(actual, expected, rtol: float, atol: float) -> float:
    """max |actual - expected| / (atol + rtol * |expected|): above 1, assert_close fails."""
    used = 0.0
    for a, e in zip(as_tensors(actual), as_tensors(expected)):
        if a.numel():
            a, e = a.double(), e.double()
            share = ((a - e).abs() / (atol + rtol * e.abs())).nan_to_num(0.0, posinf=math.inf)
            used = max(used, share.max().item())
    return used


def as_tensors(value) -> list:
    """The tensors in `value` (a tensor, a number, or lists of them), flattened."""
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in as_tensors(item)]
    if isinstance(value, float):  # a Python float is a float64: as_tensor would round it
        return [torch.tensor(value, dtype=torch.float64)]
    return [torch.as_tensor(value)]

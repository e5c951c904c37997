"""What a measured step time means: FLOPs, the machine's peak, the roofline fraction, the table.

- Training FLOPs per image are counted by `torch.utils.flop_counter.FlopCounterMode`
  on one real step of the variant. `layer_flops` and `training_flops_per_image`
  state the count by hand, from the layers, for the spec to check it against:
  a convolution costs 2 * (C_in * k * k) * C_out * H_out * W_out per image
  forward, a linear layer 2 * in * out; backward costs twice the forward less
  the first layer's input gradient, which nothing needs: 69.2 MFLOP a training
  step for the tutorial's CNN (24.7 forward).
- The peak is an upper bound measured in the same process: the best FLOP/s of
  several matrix products and of a large convolution, in each precision the
  steps use. A step can still beat it (a shape the kernels like better than any
  of ours); such a fraction is shown as "peak underestimated", never above 100%.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from cifar_spec.bench import cases
from cifar_spec.bench.measure import gc_off, synchronize
from cifar_spec.model import IMAGE_SHAPE


def layer_flops(model: nn.Module) -> list[int]:
    """Forward FLOPs of one image through each convolution and linear layer, in order."""
    flops = []

    def count(layer: nn.Module, _: tuple, out: torch.Tensor) -> None:
        if isinstance(layer, nn.Conv2d):
            per_pixel = (
                layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            )
            flops.append(2 * per_pixel * out[0].numel())
        elif isinstance(layer, nn.Linear):
            flops.append(2 * layer.in_features * layer.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *IMAGE_SHAPE, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return flops


def training_flops_per_image(model: nn.Module) -> int:
    """Forward + weight gradients (= forward) + input gradients (= forward less the first layer)."""
    flops = layer_flops(model)
    return 3 * sum(flops) - flops[0]


_COUNTED: dict = {}


def counted_flops_per_image(options, batch: int = 4) -> int:
    """FLOPs of one real training step of `options`, counted by torch, per image.

    Counted on the CPU, uncompiled and uncaptured: a CUDA graph and
    torch.compile replay the same arithmetic, and FlopCounterMode sees only
    what runs through the dispatcher.
    """
    plain = replace(options, compile=False, cuda_graph=False)
    if plain not in _COUNTED:
        # Imported here: it imports triton and torch.fx's passes (0.17 s, 2-3 s under
        # valgrind), and every worker imports this module for the peak, never for FLOPs.
        from torch.utils.flop_counter import FlopCounterMode

        case = cases.build(plain, "cpu", batch)
        counter = FlopCounterMode(display=False)
        with counter:
            case.step()
        _COUNTED[plain] = counter.get_total_flops() // batch
    return _COUNTED[plain]


@dataclass(frozen=True)
class Peak:
    """The best FLOP/s over several products in one precision, and the median of the best shape."""

    best: float
    median: float
    shape: str  # which product reached `best`
    tries: int
    precision: str  # what the products computed in: float32, tfloat32 or bfloat16


def time_flops(fn, flops: float, device: torch.device, tries: int) -> list[float]:
    """FLOP/s of `fn` in `tries` timings of at least 20 ms each, after a warm-up."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    calls = max(1, int(0.02 / max(time.perf_counter() - start, 1e-9)))
    rates = []
    with gc_off():
        for _ in range(tries):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            synchronize(device)
            rates.append(flops * calls / (time.perf_counter() - start))
    return rates


def candidate_products(device: torch.device, dtype: torch.dtype):
    """(name, fn, flops): square matmuls of growing size, and the model's widest convolution
    at a large batch, channels_last (what the fast steps use)."""
    top = 8192 if device.type == "cuda" else 2048
    n = 512
    while n <= top:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        yield f"matmul {n}", (lambda a=a, b=b: a @ b), 2 * n**3
        n *= 2
    batch = 1024 if device.type == "cuda" else 64
    x = torch.randn(batch, 32, 16, 16, device=device, dtype=dtype).to(
        memory_format=torch.channels_last
    )
    conv = nn.Conv2d(32, 64, 5, padding=2).to(device, dtype, memory_format=torch.channels_last)
    with torch.no_grad():
        yield "conv 32->64 5x5", (lambda: conv(x)), 2 * 32 * 25 * 64 * 16 * 16 * batch


def measure_peak(device: str | torch.device, dtype: torch.dtype, tries: int = 3) -> Peak:
    """The best FLOP/s of the candidate products in `dtype` (TF32 where cuDNN's convolutions
    use it, so the fraction compares like with like)."""
    device = torch.device(device)
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        best = (0.0, 0.0, "")
        with torch.no_grad():
            for name, fn, flops in candidate_products(device, dtype):
                rates = time_flops(fn, flops, device, tries)
                if max(rates) > best[0]:
                    best = (max(rates), statistics.median(rates), name)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    precision = "tfloat32" if tf32 else str(dtype).removeprefix("torch.")
    return Peak(best[0], best[1], best[2], tries, precision)


def rate_figures(
    device: str, variant: str, batch: int, images_per_s: float, flops_per_image: int, peak: Peak
) -> dict:
    """The figures of one measured rate, as stored in pytest-benchmark's extra_info."""
    fraction = images_per_s * flops_per_image / peak.best
    return {
        "device": device,
        "variant": variant,
        "batch": batch,
        "images_per_s": images_per_s,
        "train_flops_per_image": flops_per_image,
        "achieved_flops": images_per_s * flops_per_image,
        "peak_flops": peak.best,
        "peak_flops_median": peak.median,
        "peak_shape": peak.shape,
        "peak_dtype": peak.precision,
        # Above 1 the peak was not an upper bound after all: no fraction, say so.
        "roofline_fraction": fraction if fraction <= 1 else None,
        "peak_underestimated": fraction > 1,
    }

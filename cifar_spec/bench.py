"""How fast one training step runs, and how close that is to what the machine can do.

Figures for each benchmark (shared by ``benchmarks/`` and ``cifar-spec bench``):

- images/s: batch size / median step time, the device synchronized before
  the clock is read and several steps timed per reading;
- training FLOPs per image, counted from the layers: a convolution costs
  2 * (C_in * k * k) * C_out * H_out * W_out per image forward (a multiply and
  an add per weight per output pixel), a linear layer 2 * in * out. Backward
  costs twice the forward (gradients for the weights and for the inputs), less
  the first layer's input gradient, which nothing needs: 69.2 MFLOP for the
  tutorial's CNN (24.7 forward);
- the peak: the FLOP/s of a large matrix product in the step's precision,
  measured in the same process (the best of several tries, so the fraction is
  never flattered by one slow try);
- the roofline fraction: achieved FLOP/s / peak.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from cifar_spec.model import IMAGE_SHAPE, CifarNet
from cifar_spec.step import StepOptions, make_step, prepare_model, unsupported

# The variants every benchmark run measures, by name; "eager" (the tutorial's step)
# is the baseline.
VARIANTS = {v.name: v for v in [
    StepOptions(),
    StepOptions(one_call_sgd=True),
    StepOptions(channels_last=True),
    StepOptions(channels_last=True, one_call_sgd=True),
    StepOptions(channels_last=True, one_call_sgd=True, manual_backward=True),  # CPU default
    StepOptions(bf16=True),
    StepOptions(channels_last=True, bf16=True),
    StepOptions(compile=True),
    StepOptions(channels_last=True, one_call_sgd=True, cuda_graph=True),  # GPU default
    StepOptions(channels_last=True, one_call_sgd=True, bf16=True, cuda_graph=True),
]}
BATCHES = {"cpu": [1, 64, 256], "cuda": [1, 256, 1024, 4096]}


def layer_flops(model: nn.Module) -> list[int]:
    """Forward FLOPs of one image through each convolution and linear layer, in order."""
    flops = []

    def count(layer: nn.Module, _: tuple, out: torch.Tensor) -> None:
        if isinstance(layer, nn.Conv2d):
            per_pixel = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


@dataclass(frozen=True)
class Peak:
    """The FLOP/s of a large matrix product: the best of `tries` and their median."""

    best: float
    median: float
    size: int  # n of the n x n product
    tries: int
    precision: str  # what the product computed in: float32, tfloat32 or bfloat16


def measure_peak(device: str | torch.device, dtype: torch.dtype, tries: int = 5) -> Peak:
    """Grow the product until one takes >= 50 ms (up to 8192), then time it `tries` times.

    On a GPU, cuDNN runs float32 convolutions in TF32 unless told not to; the
    product then runs in TF32 too, so the fraction compares like with like.
    """
    device = torch.device(device)
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        best, median, n = time_products(device, dtype, tries)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    name = "tfloat32" if tf32 else str(dtype).removeprefix("torch.")
    return Peak(best, median, n, tries, name)


def time_products(device: torch.device, dtype: torch.dtype, tries: int) -> tuple:
    n = 256
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = seconds_per_call(lambda: a @ b, device, 2)  # the first also warms up
        if seconds >= 0.05 or n >= 8192:
            break
        n *= 2
    calls = max(1, int(0.05 / seconds))
    rates = [2 * n**3 / seconds_per_call(lambda: a @ b, device, calls) for _ in range(tries)]
    return max(rates), statistics.median(rates), n


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
        synchronize(self.device)
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


def rate_figures(device: str, variant: str, batch: int, images_per_s: float,
                 model: nn.Module, peak: Peak) -> dict:
    """The figures of one measured rate, as stored in pytest-benchmark's extra_info."""
    flops = training_flops_per_image(model)
    return {
        "device": device, "variant": variant, "batch": batch, "images_per_s": images_per_s,
        "train_flops_per_image": flops, "achieved_flops": images_per_s * flops,
        "peak_flops": peak.best, "peak_flops_median": peak.median,
        "peak_dtype": peak.precision, "roofline_fraction": images_per_s * flops / peak.best,
    }


def figures(bench: StepBench, seconds_per_step: float, peak: Peak) -> dict:
    """The figures of one step benchmark; its speed-up is against eager."""
    return rate_figures(bench.device.type, bench.options.name, bench.batch,
                        bench.batch / seconds_per_step, bench.model, peak)


def loop_figures(name: str, images_per_s: float, model: nn.Module, peak: Peak) -> dict:
    """The figures of a whole training loop at batch 1 on the CPU, against the tutorial's loop."""
    return {**rate_figures("cpu", name, 1, images_per_s, model, peak),
            "baseline": "tutorial loop"}


def add_speedups(rows: list[dict]) -> list[dict]:
    """Each row's images/s over its baseline's (eager unless it names another) of the same
    device and batch, in the same run; None where the baseline was not measured."""
    rates = {(r["device"], r["batch"], r["variant"]): r["images_per_s"] for r in rows}
    for row in rows:
        base = rates.get((row["device"], row["batch"], row.get("baseline", "eager")))
        row["speedup"] = row["images_per_s"] / base if base else None
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'device':<6} {'variant':<28} {'batch':>5} {'images/s':>10} "
             f"{'speed-up':>8} {'roofline':>8}"]
    for r in sorted(rows, key=lambda r: (r["device"], r["batch"], r["variant"] != "eager")):
        speedup = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        lines.append(f"{r['device']:<6} {r['variant']:<28} {r['batch']:>5} "
                     f"{r['images_per_s']:>10,.0f} {speedup:>8} {r['roofline_fraction']:>8.1%}")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = {
        "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


def fingerprint(info: dict | None = None) -> str:
    """A folder name for baselines: the same only on the same hardware and torch."""
    info = info or machine_info()
    hardware = info.get("gpu_name") or info["cpu_model"]
    text = f"{hardware}-{info['torch_threads']}t-torch{info['torch']}"
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)


# The gate. Absolute timings drift between runners by more than the regressions
# worth catching, so a run is judged two ways: against a baseline from the same
# hardware (pytest-benchmark's own comparison), and against floors on figures
# that do not depend on the hardware: speed-up over eager and roofline fraction.

def baseline_storage(root: Path, info: dict | None = None) -> Path:
    """Where this hardware's baselines live: one folder per fingerprint."""
    return root / fingerprint(info)


def find_baseline(storage: Path) -> Path | None:
    saved = sorted(storage.glob("*/*.json"))
    return saved[-1] if saved else None


def compare_args(storage: Path, threshold_percent: float) -> list[str]:
    """pytest arguments that fail the run when a median is `threshold_percent` slower."""
    return ["--benchmark-only", f"--benchmark-storage={storage}", "--benchmark-compare",
            f"--benchmark-compare-fail=median:{threshold_percent:g}%"]


def load_rows(result_json: Path) -> list[dict]:
    """The figures of each throughput benchmark in a pytest-benchmark JSON file."""
    data = json.loads(result_json.read_text())
    rows = [b["extra_info"] for b in data["benchmarks"] if "images_per_s" in b["extra_info"]]
    return add_speedups(rows)


def check_floors(rows: list[dict], floors: dict) -> list[str]:
    """One message per figure below its floor. `floors`: variant -> batch -> {figure: floor}."""
    failures = []
    for row in rows:
        limits = floors.get(row["variant"], {}).get(str(row["batch"]), {})
        for figure, floor in limits.items():
            value = row.get(figure)
            if value is None or value < floor:
                failures.append(
                    f"{row['device']} {row['variant']} batch {row['batch']}: {figure} "
                    f"{'missing' if value is None else f'{value:.3g}'} is below the floor {floor:g}"
                )
    return failures


def unmeasured_floors(rows: list[dict], floors: dict) -> list[str]:
    """Floors no row was measured for: a skipped variant, or a renamed one to look at."""
    measured = {(r["variant"], str(r["batch"])) for r in rows}
    return [f"{variant} batch {batch}" for variant, batches in floors.items()
            if not variant.startswith("_") for batch in batches
            if (variant, batch) not in measured]


def plan_rounds(case: StepBench, seconds: float = 2.0, round_seconds: float = 0.2
                ) -> tuple[int, int]:
    """Warm up, then pick steps per round (about `round_seconds`, so the synchronization
    that ends a round costs little) and rounds (at least 3, about `seconds` in all)."""
    case.steps(2)  # warm-up: compilation, autotuning, allocator growth
    per_step = seconds_per_call(lambda: case.steps(1), case.device, 1)
    steps = max(1, round(round_seconds / per_step))
    return steps, max(3, round(seconds / (steps * per_step)))


def time_case(case: StepBench, seconds: float = 2.0) -> float:
    """Median seconds per step over the planned rounds."""
    steps, rounds = plan_rounds(case, seconds)
    times = [seconds_per_call(lambda: case.steps(steps), case.device, 1) for _ in range(rounds)]
    return statistics.median(times) / steps

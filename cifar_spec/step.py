"""One training step of the tutorial, its options, and the one rule that says which options run.

The tutorial's inner loop is: forward, loss, ``optimizer.zero_grad()``,
``loss.backward()``, ``optimizer.step()``. ``StepOptions()`` ("eager") is
exactly that. Each option swaps one part for a faster one (``one_call_sgd``
the update, ``manual_backward`` the backward, ``cuda_graph`` the launches) or
trades exactness for speed (``bf16``, ``compile``). ``unsupported`` is the only
place that decides whether a combination can run; the step, the benchmarks
and the CLI all ask it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from cifar_spec import manual_backward
from cifar_spec.cuda_graph import cuda_graphed
from cifar_spec.errors import NonFiniteLoss
from cifar_spec.labels import check_batch
from cifar_spec.sgd import is_plain_sgd, sgd_update

LossFn = Callable[[Tensor, Tensor], Tensor]
Step = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StepOptions:
    """How a training step runs; the defaults are exactly the tutorial's step ("eager")."""

    channels_last: bool = False  # NHWC layout: the same math through other kernels
    one_call_sgd: bool = False  # plain SGD's update as one foreach call, not optimizer.step()
    manual_backward: bool = False  # CifarNet's backward written out, no autograd
    bf16: bool = False  # autocast convolutions and matmuls to bfloat16: faster, not exact
    compile: bool = False  # torch.compile the forward and backward
    cuda_graph: bool = False  # replay the whole step as one CUDA graph (CUDA only)

    @property
    def name(self) -> str:
        """The options that are on, joined by '+' in field order; 'eager' when none is."""
        return "+".join(f.name for f in fields(self) if getattr(self, f.name)) or "eager"


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def is_data_parallel(model: nn.Module) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def environment_lacks(options: StepOptions, device: torch.device) -> str | None:
    """Why this machine cannot run `options` on `device`, or None."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device on this machine"
    if options.cuda_graph and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if options.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bfloat16 support"
    if options.compile:
        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported on this Python or platform"
        if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
            return "torch.compile on the CPU needs a C++ compiler on PATH"
    return None


def options_conflict(options: StepOptions) -> str | None:
    """Why these options cannot run together, whatever the machine, or None."""
    if options.manual_backward:
        if options.bf16 or options.compile or options.cuda_graph:
            return "manual_backward is float32 and uncompiled: it combines with channels_last only"
        if not options.one_call_sgd:
            # It never fills .grad, so optimizer.step() would have nothing to apply.
            return "manual_backward needs one_call_sgd: it hands its gradients to the update"
    if options.cuda_graph:
        if options.compile:
            return "cuda_graph combines with channels_last, one_call_sgd and bf16, not compile"
        if not options.one_call_sgd:
            # optimizer.step() reads lr and bookkeeping on the host: nothing a graph replays.
            return "cuda_graph captures the one-call SGD update: turn on one_call_sgd"
    return None


def data_parallel_conflict(options: StepOptions) -> str | None:
    """Why these options cannot run as one of several data-parallel processes (DDP), or None.

    Each process's gradients must be summed with the others' before the
    update. DDP does that inside autograd's backward, so every autograd option
    (channels_last, one_call_sgd, bf16, compile) keeps working; the manual
    backward, which bypasses autograd, sums its own (`distributed.sharding.sum_gradients`).
    """
    if options.cuda_graph:
        # A replayed graph would repeat one capture's all-reduce, and capturing nccl inside
        # it needs DDP's static-graph mode, which none of this has been checked against.
        return (
            "cuda_graph captures one process's step, not the all-reduce between processes: "
            "under torchrun the default step leaves it out"
        )
    return None


def training_conflict(
    options: StepOptions,
    model: nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    loss_fn: LossFn,
) -> str | None:
    """Why these options cannot train this model with this optimizer and loss, or None."""
    if (options.one_call_sgd or options.cuda_graph) and optimizer and not is_plain_sgd(optimizer):
        # A stateful optimizer (momentum, Adam) needs its own step, and a graph's
        # warm-up would change its state.
        return (
            "one_call_sgd and cuda_graph update as plain SGD does; other optimizers need the "
            "eager step, StepOptions()"
        )
    if options.manual_backward:
        if loss_fn is not nn.functional.cross_entropy:
            return "manual_backward writes out cross-entropy's gradient; other losses need autograd"
        if model is not None and not manual_backward.applies_to(model):
            return "manual_backward is written for CifarNet as the tutorial defines it"
        if (
            optimizer is not None
            and model is not None
            and not manual_backward.updates_all(model, optimizer)
        ):
            return (
                "manual_backward updates every parameter: give SGD all of model.parameters(), "
                "each once, in one param group or several"
            )
    if options.cuda_graph and model is not None and model_device(model).type != "cuda":
        return "cuda_graph needs the model on a CUDA device"
    return None


def unsupported(
    options: StepOptions,
    device: str | torch.device,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
    data_parallel: bool = False,
) -> str | None:
    """Why `options` cannot run here (on `device`, for this model, optimizer and loss, as one
    of several data-parallel processes if `data_parallel`), or None.

    The one rule: `make_step` raises with this reason, the benchmarks skip with
    it, and the CLI refuses with it. A model or optimizer left out is not judged.
    """
    device = torch.device(device)
    return (
        options_conflict(options)
        or (data_parallel_conflict(options) if data_parallel else None)
        or training_conflict(options, model, optimizer, loss_fn)
        or environment_lacks(options, device)
    )


# What the library adds to channels_last for speed, fastest first: the first that suits
# the device and combines with what the user asked wins.
SPEED_UPS = (
    dict(one_call_sgd=True, cuda_graph=True),  # a GPU: the host no longer paces the kernels
    dict(one_call_sgd=True, manual_backward=True),  # a CPU: no autograd bookkeeping
    dict(one_call_sgd=True),
)


def default_step(
    device: str | torch.device,
    bf16: bool = False,
    compile: bool = False,
    data_parallel: bool = False,
) -> StepOptions:
    """The library's step on `device`: the fastest options for its kind of device, with the
    precision and compilation asked for (without either: the tutorial's float32 result).

    On a CPU: NHWC, the one-call update and manual_backward (the backward written
    out). On a GPU: NHWC, the one-call update and the whole step replayed as a CUDA
    graph, except under DDP (see `data_parallel_conflict`). The choice depends on the
    device's kind, not on this machine; whether it runs here is `unsupported`'s to say.
    """
    on_cpu = torch.device(device).type == "cpu"
    for extra in SPEED_UPS:
        options = StepOptions(channels_last=True, bf16=bf16, compile=compile, **extra)
        if options.cuda_graph and on_cpu or options.manual_backward and not on_cpu:
            continue  # a graph needs a GPU; the written-out backward is a win measured on CPUs
        if not options_conflict(options) and not (
            data_parallel and data_parallel_conflict(options)
        ):
            return options
    return options


def prepare_model(model: nn.Module, options: StepOptions) -> nn.Module:
    """The model in the memory layout the options run in."""
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    options: StepOptions = StepOptions(),
    loss_fn: LossFn = nn.functional.cross_entropy,
    check_finite: bool = True,
    sum_gradients: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> Step:
    """`step(images, labels) -> detached loss`: the tutorial's step, run as `options` say.

    With `check_finite`, a NaN or infinite loss raises before its backward, so
    the parameters never take a NaN step. Reading the loss stalls a GPU's
    host every step; without it the caller checks the returned losses later.
    Data-parallel: `model` is wrapped in DDP, which sums the gradients; the
    manual backward takes the plain model and sums them with `sum_gradients`.
    """
    data_parallel = sum_gradients is not None or is_data_parallel(model)
    reason = unsupported(options, model_device(model), model, optimizer, loss_fn, data_parallel)
    if reason:
        raise ValueError(reason)
    if options.manual_backward and data_parallel and sum_gradients is None:
        raise ValueError("manual_backward under DDP needs the plain model and sum_gradients")
    check_finite = check_finite and not options.cuda_graph  # a captured step cannot read it

    def check(loss: Tensor) -> None:
        if check_finite and not torch.isfinite(loss):
            raise NonFiniteLoss(f"the loss is {loss.item()}")

    if options.manual_backward:
        return manual_backward.make_manual_backward_step(model, optimizer, check, sum_gradients)
    step = autograd_step(model, optimizer, options, loss_fn, check)
    return cuda_graphed(step, model, optimizer) if options.cuda_graph else step


def autograd_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    options: StepOptions,
    loss_fn: LossFn,
    check: Callable[[Tensor], None],
) -> Step:
    """The tutorial's step through autograd, with the layout, precision and update asked for."""

    def loss_of(images: Tensor, labels: Tensor) -> Tensor:
        # A graph must not keep autocast's cache of cast weights: it would replay stale casts.
        with torch.autocast(
            images.device.type,
            dtype=torch.bfloat16,
            enabled=options.bf16,
            cache_enabled=not options.cuda_graph,
        ):
            return loss_fn(model(images), labels)

    forward = torch.compile(loss_of) if options.compile else loss_of

    @torch.no_grad()
    def one_call_sgd() -> None:
        sgd_update(optimizer)

    update = one_call_sgd if options.one_call_sgd else optimizer.step

    def step(images: Tensor, labels: Tensor) -> Tensor:
        if options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = forward(images, labels)
        check(loss)
        optimizer.zero_grad()
        loss.backward()
        update()
        return loss.detach()

    return step


def train_step(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
) -> Tensor:
    """One step, exactly the tutorial's: forward, loss, zero_grad, backward, step.

    Returns the loss detached from the graph, so that a caller who sums losses
    over an epoch (as the tutorial does) keeps no step's graph alive.
    """
    check_batch(images, labels, next(model.parameters()).dtype)
    device = model_device(model)
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    return make_step(model, optimizer, loss_fn=loss_fn)(images, labels)

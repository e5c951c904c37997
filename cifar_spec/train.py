"""One training step of the tutorial, in the tutorial's order, with its inputs checked.

The tutorial's inner loop is: forward, loss, ``zero_grad()``, ``backward()``,
``step()``. ``train_step`` does exactly that and returns the loss detached from
the graph, so that a caller who sums losses over an epoch (as the tutorial
does) does not keep every step's autograd graph alive.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from pathlib import Path

import torch
from torch import Tensor, nn

from cifar_spec import backprop, plot
from cifar_spec.model import NUM_CLASSES, CifarNet, check_images

if TYPE_CHECKING:  # data.py imports torchvision; timing a step needs torch alone
    from cifar_spec.data import DeviceData

LossFn = Callable[[Tensor, Tensor], Tensor]


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


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_step(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
) -> Tensor:
    """One step: forward, loss, zero_grad, backward, step. Returns the detached loss."""
    check_images(images)
    check_labels(labels, images.shape[0])
    device = model_device(model)
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    return make_step(model, optimizer, loss_fn=loss_fn)(images, labels)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: caught before its backward where the step reads
    the loss (the CPU), else at the end of the epoch; never saved in a checkpoint."""


@dataclass(frozen=True)
class StepOptions:
    """How a training step runs; the defaults compute exactly the tutorial's step."""

    bf16: bool = False  # autocast convolutions and matmuls to bfloat16: faster, not exact
    channels_last: bool = False  # NHWC layout: the same math through other kernels
    compile: bool = False  # torch.compile the forward and backward
    cuda_graph: bool = False  # replay the whole step as one CUDA graph (CUDA only)
    manual_backward: bool = False  # CifarNet's backward written out, no autograd (backprop.py)

    @property
    def name(self) -> str:
        on = [f for f in ("channels_last", "bf16", "compile", "cuda_graph", "manual_backward")
              if getattr(self, f)]
        return "+".join(on) or "eager"


def fast_exact_step(device: str | torch.device) -> StepOptions:
    """The fastest options that keep the tutorial's float32 result.

    On a CPU: NHWC and the written-out backward (measured 1.2-1.35x at batch 1).
    On a GPU: NHWC and the whole step replayed as a CUDA graph.
    """
    on_gpu = torch.device(device).type == "cuda"
    return StepOptions(channels_last=True, cuda_graph=on_gpu, manual_backward=not on_gpu)


def prepare_model(model: nn.Module, options: StepOptions) -> nn.Module:
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer,
              options: StepOptions = StepOptions(), loss_fn: LossFn = nn.functional.cross_entropy,
              check_finite: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
    """A function `step(images, labels) -> detached loss`: the tutorial's step, run as `options` say.

    With `check_finite`, a NaN or infinite loss raises before its backward, so
    the parameters never take a NaN step. Reading the loss stalls a GPU's
    host every step; without it the caller checks the returned losses later.
    """
    check_options(model, optimizer, options, loss_fn)
    check_finite = check_finite and not options.cuda_graph  # a captured step cannot read it

    def check(loss: Tensor) -> None:
        if check_finite and not torch.isfinite(loss):
            raise NonFiniteLoss(f"the loss is {loss.item()}")

    if options.manual_backward:
        return backprop.make_backprop_step(model, optimizer, check)

    def loss_of(images: Tensor, labels: Tensor) -> Tensor:
        # A graph must not keep autocast's cache of cast weights: it would replay stale casts.
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=options.bf16,
                            cache_enabled=not options.cuda_graph):
            return loss_fn(model(images), labels)

    forward = torch.compile(loss_of) if options.compile else loss_of

    def step(images: Tensor, labels: Tensor) -> Tensor:
        if options.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = forward(images, labels)
        check(loss)
        optimizer.zero_grad()
        loss.backward()
        update()
        return loss.detach()

    update = plain_sgd_update(optimizer) or optimizer.step
    return cuda_graphed(step, model, optimizer) if options.cuda_graph else step


def check_options(model: nn.Module, optimizer: torch.optim.Optimizer, options: StepOptions,
                  loss_fn: LossFn) -> None:
    """Refuse combinations the step cannot run correctly, before any work."""
    if options.manual_backward:
        if options.bf16 or options.compile or options.cuda_graph:
            raise ValueError("manual_backward combines with channels_last only")
        if loss_fn is not nn.functional.cross_entropy:
            raise ValueError("manual_backward writes out cross-entropy's gradient; "
                             "other losses need the autograd step")
    if options.cuda_graph:
        if options.compile or options.manual_backward:
            raise ValueError("cuda_graph combines with channels_last and bf16 only")
        if plain_sgd_update(optimizer) is None:
            raise ValueError("cuda_graph captures plain SGD's update; an optimizer with state "
                             "(momentum, Adam) would be changed by the capture's warm-up")
        if model_device(model).type != "cuda":
            raise ValueError("cuda_graph needs the model on a CUDA device")


def plain_sgd_update(optimizer: torch.optim.Optimizer) -> Callable[[], None] | None:
    """SGD's own update, p += -lr * grad, without its per-step bookkeeping; None if not plain SGD.

    At batch 1 on a CPU, `SGD.step()` spends ~0.35 ms of a ~4 ms step in
    Python (hooks, option lookups, a loop over groups) around ten additions.
    This is the same arithmetic in one foreach call, so the parameters come
    out bit for bit the same. It reads lr on every call, so schedulers work.
    """
    if not backprop.is_plain_sgd(optimizer):
        return None

    @torch.no_grad()
    def update() -> None:
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            torch._foreach_add_(params, [p.grad for p in params], alpha=-group["lr"])

    return update


def cuda_graphed(step: Callable[[Tensor, Tensor], Tensor], model: nn.Module,
                 optimizer: torch.optim.Optimizer) -> Callable[[Tensor, Tensor], Tensor]:
    """`step`, captured once per batch shape (and learning rate) as a CUDA graph and replayed.

    One replay launches the whole step (about 30 kernels) at once, which is
    what makes batch 1 fast on a GPU: the host no longer paces the kernels.
    The learning rate is baked into the captured update, so a new one (from a
    scheduler, say) gets a graph of its own.
    """
    graphs: dict[tuple, tuple[Tensor, Tensor, Tensor, torch.cuda.CUDAGraph]] = {}

    def replay(images: Tensor, labels: Tensor) -> Tensor:
        key = (tuple(images.shape), tuple(labels.shape),
               tuple(group["lr"] for group in optimizer.param_groups))
        with torch.cuda.device(images.device):  # streams and graph on the data's GPU
            if key not in graphs:
                graphs[key] = capture(step, model, images, labels)
            static_images, static_labels, static_loss, graph = graphs[key]
            static_images.copy_(images)
            static_labels.copy_(labels)
            graph.replay()
            return static_loss.clone()  # the next replay overwrites static_loss

    return replay


def capture(step: Callable[[Tensor, Tensor], Tensor], model: nn.Module, images: Tensor,
            labels: Tensor) -> tuple[Tensor, Tensor, Tensor, torch.cuda.CUDAGraph]:
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


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one training run; the defaults are the tutorial's."""

    epochs: int = 20  # passes over the data
    batch_size: int = 1  # images per step; the tutorial uses 1
    lr: float = 0.01  # SGD learning rate
    seed: int = 0  # seeds the model's initial weights and the shuffle order
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    shuffle: bool = False  # the tutorial's DataLoader does not shuffle
    limit: int | None = None  # train on the first `limit` images only (None: all)
    out: str | None = None  # run folder for checkpoints, history and plot (None: none)
    step: StepOptions | None = None  # how each step runs; None: fast_exact_step(device)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1 image, got {self.limit}")


def train_epoch(step: Callable[[Tensor, Tensor], Tensor], data: DeviceData, batch_size: int,
                epoch: int, generator: torch.Generator | None = None,
                progress: Any = None) -> float:
    """One pass over `data`; returns the sum of the per-batch losses, as the tutorial prints it.

    The losses stay on the device until the epoch ends (one host sync per
    epoch); a non-finite one is then reported with its step, in case the step
    did not check it itself.
    """
    losses = []
    for index, (images, labels) in enumerate(data.batches(batch_size, generator)):
        try:
            losses.append(step(images, labels))
        except NonFiniteLoss as error:
            raise non_finite(error, epoch, index) from None
        if progress is not None:
            progress.update(len(labels))
    losses = torch.stack(losses).double()  # (steps,)
    bad = torch.nonzero(~torch.isfinite(losses))
    if len(bad):
        raise non_finite(NonFiniteLoss(f"the loss is {losses[bad[0, 0]].item()}"), epoch,
                         int(bad[0, 0]))
    return losses.sum().item()


def non_finite(error: NonFiniteLoss, epoch: int, step: int) -> NonFiniteLoss:
    return NonFiniteLoss(
        f"{error} at epoch {epoch}, step {step}; the run stopped and the last checkpoint is "
        "intact (a smaller --lr may help)"
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 1000) -> float:
    """Mean cross-entropy over `data`, without touching the parameters."""
    total = torch.zeros((), dtype=torch.float64, device=data.images.device)
    for images, labels in data.batches(batch_size):
        total += nn.functional.cross_entropy(model(images), labels, reduction="sum")
    return total.item() / len(data)


# Settings a resumed run must share with the checkpoint it resumes;
# epochs may grow and the device may change.
RESUME_MUST_MATCH = ("batch_size", "lr", "seed", "shuffle", "limit")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = {"model", "optimizer", "epoch", "history", "config", "torch_rng", "shuffle_rng"}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and what to do."""


def save_atomically(obj: dict, path: Path) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash at any moment leaves either the old checkpoint or the new one,
    never half of one.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path} to resume; run without --resume") from None
    except Exception as error:  # torch raises several types for a bad zip or pickle
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}); it is truncated "
            "or not a cifar-spec checkpoint: move it away and train without --resume"
        ) from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        raise CheckpointError(f"{path} is not a cifar-spec checkpoint; train without --resume")
    return state


def check_resumable(state: dict, config: TrainConfig, path: Path) -> None:
    saved = state["config"]
    diff = [f"{k}={saved[k]!r} there, {getattr(config, k)!r} here"
            for k in RESUME_MUST_MATCH if saved[k] != getattr(config, k)]
    if diff:
        raise CheckpointError(f"cannot resume {path} with other settings: " + "; ".join(diff))
    if state["epoch"] >= config.epochs:
        raise CheckpointError(
            f"{path} has already trained {state['epoch']} epochs; ask for more with --epochs"
        )


@dataclass
class Run:
    """Everything a training run carries from one epoch to the next."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[Tensor, Tensor], Tensor]
    generator: torch.Generator | None
    history: list[dict]

    def state(self, config: TrainConfig) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": len(self.history),
            "history": self.history,
            "config": asdict(config),
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": None if self.generator is None else self.generator.get_state(),
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if self.generator is not None:
            self.generator.set_state(state["shuffle_rng"])


def new_run(config: TrainConfig) -> Run:
    torch.manual_seed(config.seed)
    options = config.step or fast_exact_step(config.device)
    model = prepare_model(CifarNet().to(config.device), options)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    # On the CPU reading the loss is free, so each step checks it before its
    # backward; on a GPU the epoch checks them all at its end instead.
    step = make_step(model, optimizer, options,
                     check_finite=torch.device(config.device).type == "cpu")
    generator = torch.Generator().manual_seed(config.seed) if config.shuffle else None
    return Run(model, optimizer, step, generator, [])


def start_run(config: TrainConfig, resume: bool) -> Run:
    """A fresh run, or the one saved in the run folder; never overwrites a checkpoint by accident."""
    run = new_run(config)
    path = Path(config.out) / CHECKPOINT if config.out else None
    if resume:
        if path is None:
            raise CheckpointError("--resume needs the run folder: pass --out DIR")
        state = load_checkpoint(path)
        check_resumable(state, config, path)
        run.restore(state)
    elif path is not None and path.exists():
        raise CheckpointError(
            f"{path} already exists; continue it with --resume or choose another --out"
        )
    return run


def fit(config: TrainConfig, data: DeviceData, resume: bool = False,
        log: Callable[[str], None] | None = print, progress: bool = False) -> list[float]:
    """Train as configured; return every epoch's loss sum (resumed epochs included)."""
    if config.limit is not None:
        data = data.head(config.limit)
    check_data(data)
    data = data.to(config.device)
    run = start_run(config, resume)
    from tqdm import tqdm  # imported here: a worker that only times steps needs torch alone

    for epoch in range(len(run.history), config.epochs):
        start = time.perf_counter()
        with tqdm(total=len(data), desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
                  disable=not progress, leave=False) as bar:
            loss_sum = train_epoch(run.step, data, config.batch_size, epoch + 1,
                                   run.generator, bar)
        seconds = time.perf_counter() - start
        run.history.append({"epoch": epoch + 1, "loss_sum": loss_sum, "seconds": seconds,
                            "images_per_s": len(data) / seconds})
        if log is not None:
            log(f"epoch {epoch + 1:>3}/{config.epochs}  loss sum {loss_sum:12.4f}  "
                f"{len(data) / seconds:8.0f} images/s")
        if config.out:
            save_run(run, config)
    if config.out:
        drawn = plot.loss_curve(run.history, Path(config.out) / "loss.png")
        if log is not None:
            log(f"loss curve: {drawn}" if drawn else f"no loss.png: {plot.INSTALL_HINT} draws it")
    return [row["loss_sum"] for row in run.history]


def check_data(data: DeviceData) -> None:
    """Refuse a data set that cannot train, once, before the first step."""
    if len(data) == 0:
        raise ValueError("no images to train on: the data set is empty")
    check_images(data.images)
    check_labels(data.labels.cpu(), len(data.images))


def save_run(run: Run, config: TrainConfig) -> None:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_atomically(run.state(config), out / CHECKPOINT)
    text = json.dumps({"config": asdict(config), "epochs": run.history}, indent=2)
    tmp = out / "history.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "history.json")

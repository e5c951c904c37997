"""The training loop: the tutorial's epochs over a split held on the device, saved as they end.

``fit`` checks everything it can before the first step (the data, the memory
a step needs, the run folder), holds the run folder's lock while it trains,
and saves a checkpoint after every epoch. Interrupted (Ctrl-C) or stopped by
a full disk, it leaves the last complete epoch's checkpoint and says how to
resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar_spec import checkpoint, plot, published
from cifar_spec.data import DeviceData
from cifar_spec.distributed.agreement import agree, from_leader, together
from cifar_spec.distributed.launch import World, is_lost_peer
from cifar_spec.distributed.sharding import Shard, data_parallel_step
from cifar_spec.errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    NonFiniteLoss,
    NotEnoughMemory,
    PeerLost,
)
from cifar_spec.files import folder_lock
from cifar_spec.labels import check_labels
from cifar_spec.memory import memory_shortfall
from cifar_spec.model import CifarNet, check_images
from cifar_spec.step import Step, StepOptions, default_step, make_step, prepare_model

now = time.perf_counter  # the clock every epoch and warm-up is timed by

# float32 holds nothing larger; a bigger rate turns the first update into inf.
MAX_LR = float(torch.finfo(torch.float32).max)


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one training run; the defaults are the tutorial's (and its fast step)."""

    epochs: int = 20  # passes over the data
    batch_size: int = 1  # images per step; the tutorial uses 1
    lr: float = 0.01  # SGD learning rate
    seed: int = 0  # seeds the model's initial weights and the shuffle order
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    shuffle: bool = False  # the tutorial's DataLoader does not shuffle
    limit: int | None = None  # train on the first `limit` images only (None: all)
    out: str | None = None  # run folder for checkpoints, history and plot (None: none)
    step: StepOptions | None = None  # how each step runs; None: default_step(device)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr <= MAX_LR or not math.isfinite(self.lr):
            raise ConfigError(
                f"lr must be a positive finite number a float32 can hold (at most "
                f"{MAX_LR:.3g}), got {self.lr}; the tutorial uses 0.01"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be at least 1 image, got {self.limit}")


@dataclass(frozen=True)
class SettingNames:
    """How a run's messages name what its user may change: as `fit`'s settings for a caller of
    the library (these defaults); the command line passes its flags (`cli.train.FLAGS`)."""

    out: str = "TrainConfig.out"
    lr: str = "TrainConfig.lr"
    batch_size: str = "TrainConfig.batch_size"
    limit: str = "TrainConfig.limit"
    resume: str = "fit(..., resume=True) and the same TrainConfig"  # {out}: the run folder
    # A new run with another rate and run folder: {lr} and {out} (the repr of a str, or None).
    retry: str = "fit(...) with the same TrainConfig but lr={lr}, out={out!r}"


@dataclass
class Run:
    """Everything a training run carries from one epoch to the next."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Step
    generator: torch.Generator | None
    history: list[dict]
    shard: Shard | None = None  # this rank's part of each batch, when one of several processes

    def state(self, config: TrainConfig, data: dict) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": len(self.history),
            "history": self.history,
            "config": asdict(config),
            "data": data,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": None if self.generator is None else self.generator.get_state(),
        }

    def restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            if self.generator is not None:
                self.generator.set_state(state["shuffle_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"the checkpoint's parts do not fit this run ({error}); "
                "move its folder away and start a new run"
            ) from None
        self.history = list(state["history"])


def with_step(config: TrainConfig, data_parallel: bool) -> TrainConfig:
    """`config` with the step its run takes: the one it names, else `default_step` for its
    device. `fit` chooses it once, before any work, and passes it on; `new_run` and
    `shared_settings` choose here only for a caller that did not."""
    if config.step is not None:
        return config
    return replace(config, step=default_step(config.device, data_parallel=data_parallel))


def new_run(config: TrainConfig, world: World | None = None) -> Run:
    """A run from its seed; as one of `world`'s processes, with the data-parallel step."""
    torch.manual_seed(config.seed)
    options = with_step(config, data_parallel=world is not None).step
    model = prepare_model(CifarNet().to(config.device), options)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed) if config.shuffle else None
    if world is not None:
        step = data_parallel_step(model, optimizer, options)
        return Run(model, optimizer, step, generator, [], Shard(world))
    # On the CPU reading the loss is free, so each step checks it before its
    # backward; on a GPU the epoch checks them all at its end instead.
    step = make_step(
        model, optimizer, options, check_finite=torch.device(config.device).type == "cpu"
    )
    return Run(model, optimizer, step, generator, [])


def check_resume(config: TrainConfig, resume: bool, names: SettingNames) -> None:
    """Refuse, before any work, to resume a run that has no run folder to resume from."""
    if resume and not config.out:
        raise CheckpointError(f"resuming needs the run folder: set {names.out}")


def saved_state(config: TrainConfig, data: dict, model: nn.Module) -> dict:
    """The run folder's checkpoint, checked against this run's settings and data."""
    path = Path(config.out) / checkpoint.CHECKPOINT
    state = checkpoint.load_checkpoint(path, model)
    checkpoint.check_resumable(state, asdict(config), data, path)
    return state


def start_run(config: TrainConfig, data: dict, resume: bool, world: World | None = None) -> Run:
    """A fresh run, or the one saved in the run folder, checked against this run's settings.

    Of several processes, rank 0 alone reads the checkpoint and hands it to the
    others: on several machines only its own holds the run folder.
    """
    run = new_run(config, world)
    if resume:
        load = lambda: saved_state(config, data, run.model)  # noqa: E731
        if world is None:
            run.restore(load())
        else:
            run.restore(from_leader(world, together(world, load, here=world.leader)))
    return run


class WarmUpClock:
    """The time of the steps that prepare the step, kept apart from the epoch's figure.

    torch.compile compiles, and a CUDA graph is captured, at the first batch of each
    shape a process meets: seconds, once. Counted in, they made the first epoch's
    images/s a figure of the compiler (25 images/s on a CPU). The device is synchronized
    around those steps only, so the other steps run as they would without the clock.
    """

    def __init__(self, device: str, options: StepOptions) -> None:
        self.device = torch.device(device)
        self.what = "compile" if options.compile else "graph capture"
        self.warms_up = options.compile or options.cuda_graph
        self.shapes: set[tuple[int, ...]] = set()
        self.seconds = 0.0  # this epoch's warm-up steps
        self.images = 0  # the images those steps trained on (of every process)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def step(self, images: torch.Tensor, batch_images: int) -> Iterator[None]:
        """Times the step around it if it is the first of its shape; `batch_images` is the
        whole batch, of which `images` may be this process's part."""
        shape = tuple(images.shape)
        if not self.warms_up or shape in self.shapes:
            yield
            return
        self.shapes.add(shape)
        self.sync()
        start = now()
        yield
        self.sync()
        self.seconds += now() - start
        self.images += batch_images

    def take(self) -> tuple[float, int]:
        """This epoch's warm-up seconds and images, and a clean count for the next epoch."""
        taken = self.seconds, self.images
        self.seconds, self.images = 0.0, 0
        return taken


def epoch_row(epoch: int, loss_sum: float, seconds: float, images: int, clock: WarmUpClock) -> dict:
    """An epoch's history row: its images/s over the steps that did not warm up, if any did
    not; the warm-up's seconds beside it."""
    warm_up, warm_images = clock.take()
    timed = images - warm_images
    per_s = timed / (seconds - warm_up) if timed > 0 else images / seconds
    return {
        "epoch": epoch,
        "loss_sum": loss_sum,
        "seconds": seconds,
        "images_per_s": per_s,
        "warm_up_seconds": warm_up,
    }


def describe_speed(row: dict, clock: WarmUpClock) -> str:
    figure = f"{row['images_per_s']:8.0f} images/s"
    if not row["warm_up_seconds"]:
        return figure
    return f"{figure} ({clock.what} {row['warm_up_seconds']:.1f} s apart)"


# torch.compile on a CPU imports torch.utils.cpp_extension, which warns "No CUDA runtime is
# found, using CUDA_HOME=..." wherever a CUDA toolkit is installed and no GPU is seen.
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"
NO_CUDA_RUNTIME = "No CUDA runtime is found"


def not_no_cuda_runtime(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(NO_CUDA_RUNTIME)


@contextlib.contextmanager
def quiet_cuda_home(config: TrainConfig) -> Iterator[None]:
    """Drop that one warning while a CPU run compiles: a CPU run needs no CUDA runtime, so
    on a CPU it is noise. A run on a GPU, or without compile, hears every warning."""
    if torch.device(config.device).type != "cpu" or not config.step.compile:
        yield
        return
    logger = logging.getLogger(CPP_EXTENSION_LOGGER)
    logger.addFilter(not_no_cuda_runtime)
    try:
        yield
    finally:
        logger.removeFilter(not_no_cuda_runtime)


def non_finite(error: NonFiniteLoss, epoch: int, step: int) -> NonFiniteLoss:
    return NonFiniteLoss(f"{error} at epoch {epoch}, step {step}")


def train_epoch(
    step: Step,
    data: DeviceData,
    batch_size: int,
    epoch: int,
    generator: torch.Generator | None = None,
    progress: Any = None,
    shard: Shard | None = None,
    clock: WarmUpClock | None = None,
) -> float:
    """One pass over `data`; returns the sum of the per-batch losses, as the tutorial prints it.

    The losses stay on the device until the epoch ends (one host sync per
    epoch); a non-finite one is then reported with its step, in case the step
    did not check it itself. Of several processes, each takes its `shard` of
    every batch, and the losses summed over all of them are returned. `clock` times
    the steps that warm up apart.
    """
    losses = []
    if shard is None:
        batches = data.batches(batch_size, generator)
    else:
        batches = shard.batches(data, batch_size, generator)
    # Of several processes, each batch is this rank's part and carries its weight (sharding.Part).
    for index, (images, labels, *weight) in enumerate(batches):
        batch_images = min(batch_size, len(data) - index * batch_size)
        try:
            with clock.step(images, batch_images) if clock else contextlib.nullcontext():
                losses.append(step(images, labels, *weight))
        except NonFiniteLoss as error:
            raise non_finite(error, epoch, index) from None
        if progress is not None:
            progress.update(len(labels))
    losses = torch.stack(losses).double()  # (steps,)
    if shard is not None:
        losses = shard.total(losses)  # every rank's part of each step's loss
    bad = torch.nonzero(~torch.isfinite(losses))
    if len(bad):
        raise non_finite(
            NonFiniteLoss(f"the loss is {losses[bad[0, 0]].item()}"), epoch, int(bad[0, 0])
        )
    return losses.sum().item()


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int = 1000) -> float:
    """Mean cross-entropy over `data`, without touching the parameters."""
    total = torch.zeros((), dtype=torch.float64, device=data.images.device)
    for images, labels in data.batches(batch_size):
        total += nn.functional.cross_entropy(model(images), labels, reduction="sum")
    return total.item() / len(data)


def check_data(data: DeviceData) -> None:
    """Refuse a data set that cannot train, once, before the first step."""
    if len(data) == 0:
        raise ConfigError("no images to train on: the data set is empty")
    check_images(data.images, torch.float32)
    check_labels(data.labels.cpu(), len(data.images))


def check_memory(config: TrainConfig, num_images: int, names: SettingNames) -> None:
    """Refuse, before allocating, a run whose data and one step cannot fit in free memory."""
    shortfall = memory_shortfall(config.batch_size, num_images, config.device)
    if shortfall:
        raise NotEnoughMemory(f"{shortfall}; use a smaller {names.batch_size} (or {names.limit})")


def save_epoch(run: Run, config: TrainConfig, data: dict, names: SettingNames) -> None:
    """The checkpoint, then the history; a failed write leaves the previous checkpoint."""
    out = Path(config.out)
    try:
        checkpoint.save_checkpoint(out, run.state(config, data))
        checkpoint.save_history(out, asdict(config), run.history)
    except OSError as error:  # a full disk, a folder made read-only mid-run
        raise CheckpointError(
            f"could not save epoch {len(run.history)} in {out} ({error.strerror}); "
            f"{saved_note(config, len(run.history) - 1, names)}"
        ) from None


def saved_note(config: TrainConfig, epochs: int, names: SettingNames) -> str:
    """What is on disk after `epochs` complete epochs, and how to go on from it."""
    if not config.out:
        return f"nothing was saved (no {names.out})"
    if epochs == 0:
        return f"no epoch was saved in {config.out}: start the run again"
    return (
        f"{Path(config.out) / checkpoint.CHECKPOINT} holds epoch {epochs}: continue with "
        + names.resume.format(out=config.out)
    )


def epochs_kept(config: TrainConfig, epochs: int, drawn: Path | None, names: SettingNames) -> str:
    """What a run stopped after `epochs` complete epochs has on disk, as a NaN stop says it."""
    if not config.out:
        return f"nothing was saved (no {names.out})"
    if epochs == 0:
        return f"no epoch was saved in {config.out}"
    held = "epoch 1" if epochs == 1 else f"epochs 1-{epochs}"
    return f"{config.out} holds {held}" + (f", drawn in {drawn}" if drawn else "")


def fresh_folder(out: str) -> str:
    """A run folder beside `out` that does not exist yet, for a run with a new rate."""
    base = str(Path(out))
    name, n = base, 1
    while Path(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def retry_note(config: TrainConfig, names: SettingNames) -> str:
    """The run to try after a NaN: half the rate, as the tutorial's own lower rate is. A resume
    keeps the rate that diverged (and one with another rate is refused, `check_resumable`),
    so the new run gets a run folder of its own."""
    lr = config.lr / 2
    if not config.out:
        return f"try half the {names.lr}: " + names.retry.format(lr=f"{lr:g}", out=None)
    out = fresh_folder(f"{config.out}-lr{lr:g}")
    return (
        f"a resumed run keeps {names.lr} {config.lr:g}, so try half of it in a new run "
        "folder: " + names.retry.format(lr=f"{lr:g}", out=out)
    )


def published_curve(config: TrainConfig, data: DeviceData) -> tuple[float, ...] | None:
    """The published CIFAR-10 sums to draw beside a run with the tutorial's own settings."""
    tutorial = published.is_tutorial_run(len(data), config.lr, config.batch_size, config.shuffle)
    return published.TWENTY_EPOCHS if tutorial else None


def draw_loss(run: Run, config: TrainConfig, data: DeviceData) -> Path | None:
    """loss.png in the run folder, of the epochs so far; None without matplotlib."""
    path = Path(config.out) / checkpoint.LOSS_PLOT
    return plot.loss_curve(run.history, path, published_curve(config, data))


def train(
    config: TrainConfig,
    data: DeviceData,
    resume: bool,
    log: Callable[[str], None] | None,
    progress: bool,
    world: World | None,
    names: SettingNames,
) -> list[float]:
    """The epochs themselves, the run folder (if any) already checked and locked.

    Of several processes, rank 0 alone logs, shows progress and writes; the
    others train and sum their losses with it.
    """
    record = data.record()
    data = data.to(config.device)
    run = start_run(config, record, resume, world)
    from tqdm import tqdm  # imported here: a worker that only times steps needs torch alone

    leader = world is None or world.leader
    log, progress = (log, progress) if leader else (None, False)
    mine = len(data) if run.shard is None else run.shard.images(len(data), config.batch_size)
    saved = len(run.history)
    clock = WarmUpClock(config.device, config.step)
    try:
        for epoch in range(len(run.history), config.epochs):
            start = now()
            with (
                tqdm(
                    total=mine,
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                    unit="img",
                    disable=not progress,
                    leave=False,
                ) as bar,
                quiet_cuda_home(config),
            ):
                loss_sum = train_epoch(
                    run.step,
                    data,
                    config.batch_size,
                    epoch + 1,
                    run.generator,
                    bar,
                    run.shard,
                    clock if clock.warms_up else None,  # no step of the hot path pays for it
                )
            seconds = now() - start
            run.history.append(epoch_row(epoch + 1, loss_sum, seconds, len(data), clock))
            if log is not None:
                log(
                    f"epoch {epoch + 1:>3}/{config.epochs}  loss sum {loss_sum:12.4f}  "
                    + describe_speed(run.history[-1], clock)
                )
            if config.out:
                if leader:
                    save_epoch(run, config, record, names)
                saved = len(run.history)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted in epoch {saved + 1}; {saved_note(config, saved, names)}"
        ) from None
    except NonFiniteLoss as error:
        # The epochs that ran are drawn still: the curve is what shows how the loss got there.
        drawn = draw_loss(run, config, data) if config.out and leader and run.history else None
        raise NonFiniteLoss(
            f"{error}; the run stopped: {epochs_kept(config, saved, drawn, names)}; "
            + retry_note(config, names)
        ) from None
    except RuntimeError as error:
        if world is None or not is_lost_peer(error):
            raise
        raise PeerLost(
            f"another process of the run died or stopped answering in epoch {saved + 1} "
            f"({str(error).splitlines()[0][:200]}); {saved_note(config, saved, names)}"
        ) from None
    if config.out and leader:
        drawn = draw_loss(run, config, data)
        if log is not None:
            log(f"loss curve: {drawn}" if drawn else f"no loss.png: {plot.INSTALL_HINT} draws it")
    return [row["loss_sum"] for row in run.history]


def shared_settings(config: TrainConfig, data: DeviceData, resume: bool, world: World) -> dict:
    """What every rank of a run must have as rank 0 has it: the settings and data it trains.

    The device's type only: each rank's GPU is its own (cuda:0 on one, cuda:1 on the next).
    """
    record = data.record()
    return dict(
        asdict(config),
        device=torch.device(config.device).type,
        step=with_step(config, data_parallel=True).step.name,
        resume=resume,
        backend=world.backend,
        data=record["split"],
        images=f"{record['images']} (labels {record['labels_sha256']})",
    )


def fit(
    config: TrainConfig,
    data: DeviceData,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    progress: bool = False,
    world: World | None = None,
    names: SettingNames = SettingNames(),
) -> list[float]:
    """Train as configured; return every epoch's loss sum (resumed epochs included).

    With `config.out`, the run folder is checked before any work and locked
    while the run writes to it. As one of `world`'s processes (its process
    group joined), the sums are those of the global batches, on every rank;
    rank 0 alone checks, locks and writes the run folder, once every rank is
    known to have its settings and data. `names` words what its messages tell
    the user to change: `fit`'s settings, unless the caller passes its own names
    (the command line: its flags).
    """
    config = with_step(config, data_parallel=world is not None)
    if config.limit is not None:
        data = data.head(config.limit)
    if world is not None:  # before any rank can stop alone on its own settings
        agree(world, shared_settings(config, data, resume, world))
    check_resume(config, resume, names)
    check_data(data)
    check_memory(config, len(data), names)
    if not config.out:
        return train(config, data, resume, log, progress, world, names)
    out = Path(config.out)
    with contextlib.ExitStack() as held:

        def claim() -> None:
            checkpoint.check_run_folder(out, resume)
            held.enter_context(folder_lock(out, checkpoint.RUN_LOCK))
            # Again: no one else can write there now.
            checkpoint.check_run_folder(out, resume, locked=True)

        if world is None:
            claim()
        else:
            together(world, claim, here=world.leader)
        return train(config, data, resume, log, progress, world, names)

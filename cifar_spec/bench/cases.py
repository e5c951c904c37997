"""The cases every benchmark measures: which variants of the step, at which batch sizes.

A case is one variant of the training step (`StepOptions`) on one device at
one batch size, built on one fixed random batch and ready to run. `Case` names
one for a worker to build; `measure.py` times it, `figures.py` says what the time
means, `gate.py` and `compare.py` judge it; `worker.py` builds cases in fresh processes.

A round of a case is the same work every time, however many rounds the noise asks for:
each starts from the weights and optimizer state the case was built with (`Snapshot`),
and its loss is checked after it (`check`), or the round fails naming the case (`BadRound`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cifar_spec.bench.records import Case
from cifar_spec.data import to_device
from cifar_spec.errors import BadRound, NonFiniteLoss
from cifar_spec.loop import TrainConfig, new_run, train_epoch
from cifar_spec.model import IMAGE_SHAPE, CifarNet
from cifar_spec.step import StepOptions, default_step, make_step, prepare_model, unsupported
from cifar_spec.synthetic import is_synthetic, write_synthetic_cifar10

# The variants every benchmark run measures, by name; "eager" (the tutorial's step)
# is the reference every other is paired with.
VARIANTS = {
    v.name: v
    for v in [
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
    ]
}


def default_variants(device: str, data_parallel: bool = False) -> list[str]:
    """The variants compare, counting and bench-ddp judge when none are asked for: eager and
    the device's fast default (`step.default_step`, the one rule)."""
    return ["eager", default_step(device, data_parallel=data_parallel).name]


def skip_reason(options: StepOptions, device: str | torch.device) -> str | None:
    """Why a benchmark does not time `options` on `device`: it cannot run (`step.unsupported`,
    the one rule), or it would only time an emulation."""
    reason = unsupported(options, device)
    if (
        reason is None
        and options.bf16
        and torch.device(device).type == "cpu"
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ):
        # Emulated, a bfloat16 step is 8-20x slower than float32 (measured on a Zen 1 EPYC):
        # timing it says nothing about bfloat16 and costs minutes.
        reason = "this CPU has no native bfloat16 (AVX512-BF16 or AMX); torch would emulate it"
    return reason


class Snapshot:
    """A model's state_dict and its optimizer's, copied, to put back in place before a round."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.take()

    def take(self) -> None:
        """Keep the state they are in now as the one to restore."""
        # (the model's own tensor, its copy): copied back in place, so that compiled code
        # and a captured CUDA graph, which hold these very tensors, read the restored values
        self.tensors = [
            (live, live.detach().clone()) for live in self.model.state_dict(keep_vars=True).values()
        ]
        self.optimizer_state = copy.deepcopy(self.optimizer.state_dict())

    @torch.no_grad()
    def restore(self) -> None:
        for live, saved in self.tensors:
            live.copy_(saved)
        self.optimizer.load_state_dict(self.optimizer_state)


@dataclass
class StepBench:
    """One variant's training step on one fixed random batch, ready to time.

    Trained on one batch round after round, the model memorizes it: its loss heads to 0
    (or, on another CPU's kernels, overflows) and the step then times other arithmetic
    than on real data. So every round starts from the weights the case was built with
    (`restore`, outside the clock) and ends with a `check` that its last loss is finite.
    """

    options: StepOptions
    device: torch.device
    batch: int
    model: nn.Module
    train: Callable[[], Tensor]  # one step of the variant on the case's batch
    snapshot: Snapshot  # the weights and optimizer state every round starts from
    loss: Tensor | None = None  # the last step's

    @property
    def key(self) -> str:
        return Case(str(self.device), self.options.name, self.batch).key  # the one spelling

    def step(self) -> Tensor:
        self.loss = self.train()
        return self.loss

    def restore(self) -> None:
        self.snapshot.restore()

    def check(self) -> None:
        if not torch.isfinite(self.loss):
            raise BadRound(
                f"case {self.key}: a round from its saved weights ended in a loss of "
                f"{self.loss.item()}; its time would be of arithmetic on non-finite numbers"
            )


def build(options: StepOptions, device: str | torch.device, batch: int, seed: int = 0) -> StepBench:
    device = torch.device(device)
    torch.manual_seed(seed)
    model = prepare_model(CifarNet().to(device), options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = make_step(model, optimizer, options, check_finite=False)
    # Random pixels and labels: zeros would let kernels skip work they do on real data.
    images = torch.rand(batch, *IMAGE_SHAPE, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    snapshot = Snapshot(model, optimizer)
    return StepBench(options, device, batch, model, lambda: step(images, labels), snapshot)


def precision(options: StepOptions) -> torch.dtype:
    return torch.bfloat16 if options.bf16 else torch.float32


# Whole loops at the tutorial's settings (batch 1, float32, CPU): the tutorial's own
# (DataLoader, PIL images, ToTensor() on every image) against fit's (one tensor, the
# fast exact step). One "step" of a loop case is an epoch of LOOP_IMAGES images.
LOOPS = {
    "tutorial loop": "the tutorial's own loop",
    "fit loop": "fit's loop, the library's default",
}
LOOP_REFERENCE = "tutorial loop"
LOOP_IMAGES = 100


@dataclass
class LoopBench:
    """One epoch of a training loop over LOOP_IMAGES synthetic images, the same one every time.

    Each epoch starts from the weights and optimizer state the loop was built with and
    must give the first epoch's finite loss sum: without the restore each round trained
    one epoch further, and how far depended on how many rounds the noise asked for (on a
    Zen 4, far enough to overflow). The restore runs inside the clock, since a round may
    hold several epochs: 0.09-0.3 ms against 130-420 ms for an epoch of fit's loop (under
    0.1%; 2-core Zen 4, one and two threads, busy), far below any figure's interval.
    """

    name: str
    device: torch.device
    images: int
    epoch: Callable[[], float]  # one epoch from the model's current state; its loss sum
    snapshot: Snapshot
    first: float | None = None  # the first epoch's loss sum, which every later one must equal
    last: float | None = None

    def step(self) -> float:
        self.restore()
        try:
            self.last = self.epoch()
        except NonFiniteLoss as error:  # fit's step stops at the first one
            raise BadRound(
                f"case {self.name!r}: an epoch from its saved weights computed a non-finite "
                f"loss ({error})"
            ) from None
        self.check()
        return self.last

    def restore(self) -> None:
        self.snapshot.restore()

    def check(self) -> None:
        if not math.isfinite(self.last):
            raise BadRound(
                f"case {self.name!r}: an epoch from its saved weights gave a loss sum of "
                f"{self.last}; its time would be of arithmetic on non-finite numbers"
            )
        if self.first is None:
            self.first = self.last
        elif self.last != self.first:  # the same arithmetic on the same numbers, in one process
            raise BadRound(
                f"case {self.name!r}: an epoch from its saved weights gave a loss sum of "
                f"{self.last!r}, the first gave {self.first!r}; its rounds do different work"
            )


def build_loop(name: str, root: str) -> LoopBench:
    """The loop `name` on the synthetic test split under `root` (written there if missing)."""
    # Imported here: both loops read data through torchvision, which takes seconds to
    # import and which a worker that times steps never needs (it may have none).
    from cifar_spec.cifar10 import load_cifar10
    from cifar_spec.tutorial import tutorial_epoch, tutorial_setup

    if not is_synthetic(root):
        write_synthetic_cifar10(root, n_train=5, n_test=LOOP_IMAGES)
    if name == "tutorial loop":
        model, loader, loss, optimizer = tutorial_setup(root, LOOP_IMAGES)
        epoch = lambda: tutorial_epoch(model, loader, loss, optimizer)  # noqa: E731
    elif name == "fit loop":
        run = new_run(TrainConfig())  # the defaults: the tutorial's settings, the fast exact step
        model, optimizer = run.model, run.optimizer
        data = to_device(load_cifar10(root, train=False))
        epoch = lambda: train_epoch(run.step, data, 1, epoch=1)  # noqa: E731
    else:
        raise ValueError(f"no loop {name!r}; the loops are {', '.join(LOOPS)}")
    snapshot = Snapshot(model, optimizer)
    return LoopBench(name, torch.device("cpu"), LOOP_IMAGES, epoch, snapshot)

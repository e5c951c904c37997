"""The training face of ``cifar-spec``: summary, train and data synth parse here and call the
library, nothing more."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cifar_spec import losses, synthetic
from cifar_spec.bench import progress
from cifar_spec.checkpoint import check_run_folder
from cifar_spec.cifar10_format import BASE_FOLDER
from cifar_spec.cli.options import (
    HelpFormatter,
    add_device_option,
    add_progress_option,
    finite_positive,
    pick_device,
)
from cifar_spec.data import to_device
from cifar_spec.distributed import agreement, launch, sharding
from cifar_spec.errors import CifarSpecError, ConfigError, DataError
from cifar_spec.files import cannot_write
from cifar_spec.loop import SettingNames, TrainConfig, check_memory, check_resume, fit
from cifar_spec.model import CifarNet, format_summary
from cifar_spec.step import StepOptions, default_step, unsupported

if TYPE_CHECKING:  # torchvision takes seconds to import; only reading data needs it
    from torchvision.datasets import CIFAR10

# How to go on with a run: {command}, the command that started it (`launched_as`).
RESUME = "`{command} --out {{out}} --resume` and the same settings"


# How the library's messages name the settings to change, as this command's flags.
FLAGS = SettingNames(
    out="--out",
    lr="--lr",
    batch_size="--batch-size",
    limit="--limit",
    resume=RESUME.format(command="cifar-spec train"),
)


# Flags of the run itself that a retry after a NaN sets anew, or drops: it is a new run.
RETRY_SETS = ("resume", "out", "lr")


def train_parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser().add_subparsers()
    add_train_parser(commands)
    return commands.choices["train"]


def launched_as(environ: Mapping[str, str]) -> list[str]:
    """The words that start a run like this one: `cifar-spec train`, or under torchrun the
    torchrun that started it, as far as its environment says (one machine: `--standalone`
    and its processes; several: `...` for the rendezvous flags each machine was given)."""
    if launch.ERROR_FILE not in environ or "LOCAL_WORLD_SIZE" not in environ:
        return ["cifar-spec", "train"]  # one process, or ranks started by hand
    here, size = environ["LOCAL_WORLD_SIZE"], environ.get("WORLD_SIZE", "")
    if here == size:
        return ["torchrun", "--standalone", "--nproc-per-node", here, "-m", "cifar_spec", "train"]
    return ["torchrun", "--nproc-per-node", here, "...", "-m", "cifar_spec", "train"]


def setting_names(args: argparse.Namespace, environ: Mapping[str, str]) -> SettingNames:
    """`FLAGS` with the commands to resume this run and retry it, started as it was."""
    command = shlex.join(launched_as(environ))
    return replace(FLAGS, resume=RESUME.format(command=command), retry=retry_command(args, environ))


def retry_command(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """This run's command (`launched_as`) with its flags as given (those left at their
    defaults left out), but a new run: {out} and {lr} to fill in (`SettingNames.retry`)."""
    words = launched_as(environ)
    for action in train_parser()._actions:
        value = getattr(args, action.dest, action.default)  # absent: --batch-size not given
        if not action.option_strings or action.dest in RETRY_SETS or value == action.default:
            continue
        words += (
            [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
        )
    command = shlex.join(words).replace("{", "{{").replace("}", "}}")  # format()'s braces
    out = " --out {out}" if args.out else ""
    return f"`{command}{out} --lr {{lr}}`"


def cmd_summary(args: argparse.Namespace) -> int:
    l1, mse = losses.tutorial_example()
    print("The tutorial's loss example: inputs [1, 2, 3], targets [1, 2, 5]")
    print(f"  L1Loss  = {l1.item():.4f}  (2/3)")
    print(f"  MSELoss = {mse.item():.4f}  (4/3)")
    print()
    print("The tutorial's CNN, one 3x32x32 image:")
    print(format_summary(CifarNet()))
    return 0


def check_data_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(
            f"--data-root {root} is a file, not a folder; pass the folder that "
            "holds (or is to hold) cifar-10-batches-py"
        )


def write_stand_in(root: Path) -> None:
    """Write the default synthetic set in `root`, or say in one line why it cannot be."""
    try:
        synthetic.write_synthetic_cifar10(root)
    except OSError as error:
        raise DataError(cannot_write(f"the synthetic stand-in in {root}", error)) from None


def pick_data_root(args: argparse.Namespace, say: Callable[[str], None] = print) -> Path:
    """The set `data synth` wrote in --data-root, the real one, or the stand-in, said in a line.

    A complete synthetic set is never rewritten here: its settings are its
    own (`data synth` chooses them), not this run's --seed.
    """
    root = Path(args.data_root)
    check_data_root(root)
    if synthetic.synthetic_settings(root) is not None:
        say(f"using the synthetic CIFAR-10 stand-in in {root} (written by data synth)")
        return root
    if synthetic.is_synthetic(root):  # ours, but cut short or an older generator's
        raise DataError(
            f"the synthetic set in {root / BASE_FOLDER} {synthetic.why_unusable(root)}; "
            + synthetic.rewrite_hint(root)
        )
    real = (root / BASE_FOLDER).exists() and not synthetic.is_synthetic(root)
    if not args.synthetic and (real or args.download):
        return root
    stand_in = root / "synthetic"
    if synthetic.synthetic_settings(stand_in) is None:  # missing or cut short: ours to (re)write
        write_stand_in(stand_in)
    reason = "as asked" if args.synthetic else f"no CIFAR-10 under {root} and no --download"
    say(
        f"using the synthetic CIFAR-10 stand-in in {stand_in} ({reason}); it is calibrated to "
        "train like CIFAR-10 (docs/training.md)"
    )
    return stand_in


def step_options(args: argparse.Namespace, device: str, data_parallel: bool = False) -> StepOptions:
    """The step the flags ask for, refused with the reason when it cannot run here.

    --eager is the tutorial's step; otherwise the fastest step with the asked
    precision and compilation. Nothing asked for is dropped or changed.
    """
    bf16 = args.precision == "bf16"
    if args.eager:
        options = StepOptions(bf16=bf16, compile=args.compile)
    else:
        options = default_step(device, bf16=bf16, compile=args.compile, data_parallel=data_parallel)
    reason = unsupported(options, device, data_parallel=data_parallel)
    if reason:
        raise ConfigError(f"step {options.name} cannot run on {device}: {reason}")
    return options


def check_before_work(args: argparse.Namespace, config: TrainConfig) -> None:
    """Everything the run will write to, checked before any data is read or written; no flag
    that the run would silently drop."""
    if args.dry_run and args.epochs != TrainConfig.epochs:
        raise ConfigError(
            f"--dry-run trains one epoch, so --epochs {args.epochs} would be dropped; "
            f"leave out --dry-run to train {args.epochs}, or --epochs to smoke-test"
        )
    check_resume(config, args.resume, FLAGS)
    if args.out:
        check_run_folder(Path(args.out), args.resume)
    check_data_root(Path(args.data_root))


def load_split(args: argparse.Namespace, say: Callable[[str], None], download: bool) -> CIFAR10:
    # Imported here: torchvision takes seconds to import, and only reading data needs it.
    from cifar_spec.cifar10 import load_cifar10

    return load_cifar10(pick_data_root(args, say), train=args.train_split, download=download)


def load_split_once_per_machine(
    args: argparse.Namespace, world: launch.World, say: Callable[[str], None]
) -> CIFAR10:
    """The split on every rank, written or downloaded by one rank on each machine (its LOCAL_RANK
    0) while the others wait: two writers in one folder would find it locked."""
    first = world.local_rank == 0
    split = agreement.together(world, lambda: load_split(args, say, args.download), here=first)
    return split if first else load_split(args, say, download=False)


def train_config(args: argparse.Namespace, device: str, world: launch.World | None) -> TrainConfig:
    """The run's settings from the flags; under torchrun, the rank's device and global batch."""
    world_size = 1 if world is None else world.size
    # Absent: not given; the default batch per process, on every process.
    batch_size = getattr(args, "batch_size", TrainConfig.batch_size * world_size)
    if world is not None:
        device = world.device(device)
        sharding.check_batch_size(batch_size, world)
    return TrainConfig(
        epochs=1 if args.dry_run else args.epochs,
        batch_size=batch_size,
        lr=args.lr,
        seed=args.seed,
        device=device,
        shuffle=args.shuffle,
        step=step_options(args, device, data_parallel=world is not None),
        limit=min(args.limit or 64, 64) if args.dry_run else args.limit,
        out=args.out,
    )


def settings_before_joining(
    args: argparse.Namespace,
) -> tuple[launch.World | None, TrainConfig]:
    """The world and the run's settings from the flags and environment alone, so refused alike
    on every rank before any joins; under torchrun, said once a machine."""
    try:
        device = pick_device(args.device)
        world = launch.world_from_env(os.environ, device, args.backend, args.dist_timeout)
        return world, train_config(args, device, world)
    except CifarSpecError as error:
        raise launch.said_once_per_machine(error, os.environ, args.dist_timeout) from None


def cmd_train(args: argparse.Namespace) -> int:
    """Train in this process, or as one rank of those torchrun started (its environment says)."""
    with launch.reported_to_torchrun(os.environ):
        world, config = settings_before_joining(args)
        if world is None:
            check_before_work(args, config)
            return train_and_report(args, config, None, print)
        say = print if world.leader else lambda line: None
        with launch.process_group(world):
            agreement.together(world, lambda: check_before_work(args, config), here=world.leader)
            return train_and_report(args, config, world, say)


def train_and_report(
    args: argparse.Namespace,
    config: TrainConfig,
    world: launch.World | None,
    say: Callable[[str], None],
) -> int:
    if world is None:
        split = load_split(args, say, args.download)
    else:
        split = load_split_once_per_machine(args, world, say)
    size = min(len(split), config.limit or len(split))
    if config.limit and config.limit > len(split):
        say(f"--limit {config.limit} is more than the split holds: all {len(split)} images")
    check_memory(config, size, FLAGS)  # before the split is moved
    processes = "" if world is None else f", {world.size} processes ({world.backend})"
    say(
        f"training on {size} images ({'train' if args.train_split else 'test'} split) on "
        f"{config.device}{processes}, step: {config.step.name}"
    )
    sums = fit(
        config,
        to_device(split, config.device, config.limit),
        resume=args.resume,
        log=say,
        progress=progress.shown(args.no_progress),
        world=world,
        names=setting_names(args, os.environ),
    )
    trend = " -> ".join(
        f"{value:.1f}"
        for value in (sums if len(sums) <= 4 else [sums[0], sums[len(sums) // 2], sums[-1]])
    )
    say(
        f"done: {len(sums)} epoch{'' if len(sums) == 1 else 's'}, loss sums {trend}"
        + (f"; run folder {args.out}" if args.out else f"; nothing saved (no {FLAGS.out})")
    )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    folder = synthetic.write_synthetic_cifar10(
        args.root, args.n_train, args.n_test, args.seed, args.signal
    )
    print(
        f"wrote {args.n_train} training and {args.n_test} test images "
        f"(signal {args.signal}) to {folder}"
    )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cifar_spec.calibration import calibration_table  # torchvision: only when asked

    if args.epochs < 1 or args.limit is not None and args.limit < 2:
        raise ConfigError("--epochs must be at least 1 and --limit at least 2 images")
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    print(calibration_table(args.root, tuple(args.seeds), args.epochs, args.limit, log=say))
    return 0


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train the tutorial's CNN (defaults: the tutorial's run)",
        formatter_class=HelpFormatter,
    )
    # Each default is TrainConfig's, written there once.
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="passes over the data")
    p.add_argument(
        "--batch-size",
        type=int,
        default=argparse.SUPPRESS,
        help=f"images per step; under torchrun, over all processes, where the default is "
        f"{TrainConfig.batch_size} per process (default: {TrainConfig.batch_size})",
    )
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="SGD learning rate")
    p.add_argument(
        "--seed", type=int, default=TrainConfig.seed, help="seed of the weights and shuffle order"
    )
    add_device_option(p)
    p.add_argument("--data-root", default="data", help="folder holding cifar-10-batches-py")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 if missing")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="train on the synthetic stand-in (written under DATA_ROOT/synthetic)",
    )
    p.add_argument(
        "--train-split",
        action="store_true",
        help="use the 50,000-image train split, not the tutorial's test split",
    )
    p.add_argument("--shuffle", action="store_true", help="new order every epoch")
    p.add_argument(
        "--limit", type=int, default=TrainConfig.limit, help="use only the first N images"
    )
    p.add_argument("--dry-run", action="store_true", help="one epoch on 64 images, to smoke-test")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument(
        "--out", default=TrainConfig.out, help="run folder: checkpoint, history.json, loss.png"
    )
    add_progress_option(p)
    p.add_argument(
        "--backend",
        choices=launch.BACKENDS,
        default="auto",
        help="under torchrun, how processes exchange gradients: auto is nccl on CUDA, gloo on "
        "the CPU",
    )
    p.add_argument(
        "--dist-timeout",
        type=finite_positive,
        default=launch.DEFAULT_TIMEOUT,
        help="under torchrun, seconds a process waits for the others at an exchange before "
        "the run stops",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16 autocasts convolutions and matmuls: faster on GPUs and on CPUs "
        "with native bfloat16, not bit-exact (the loss stays within 2%% of fp32's)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the step")
    p.add_argument(
        "--eager",
        action="store_true",
        help="the tutorial's step (NCHW, autograd, optimizer.step()) instead of the "
        "fastest one (channels_last and one_call_sgd, plus manual_backward on a "
        "CPU or cuda_graph on a GPU)",
    )
    p.set_defaults(func=cmd_train)


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="manage data sets")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = sub.add_parser(
        "synth",
        help="write the synthetic CIFAR-10 stand-in",
        formatter_class=HelpFormatter,
    )
    synth.add_argument("--root", required=True, help="folder to write cifar-10-batches-py in")
    synth.add_argument("--n-train", type=int, default=50_000, help="training images")
    synth.add_argument("--n-test", type=int, default=10_000, help="test images")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    synth.add_argument(
        "--signal",
        type=float,
        default=1.0,
        help="how much of an image its class decides: 1 trains like CIFAR-10 (the default), "
        f"less is harder, more is easier, 0 shows no class at all (0 to {synthetic.MAX_SIGNAL})",
    )
    synth.set_defaults(func=cmd_synth)
    calibrate = sub.add_parser(
        "calibrate",
        help="measure a data set against CIFAR-10's published figures (pixels, a linear "
        "probe, the model's accuracy, the tutorial's run); about 17 minutes on a core",
        formatter_class=HelpFormatter,
    )
    calibrate.add_argument("--root", required=True, help="folder holding cifar-10-batches-py")
    calibrate.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="weight seeds of the tutorial's run"
    )
    calibrate.add_argument("--epochs", type=int, default=5, help="epochs of the tutorial's run")
    calibrate.add_argument(
        "--limit", type=int, default=None, help="use only the first N images of each split"
    )
    calibrate.set_defaults(func=cmd_calibrate)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    summary = commands.add_parser(
        "summary", help="print the tutorial's two loss values and a summary of its model"
    )
    summary.set_defaults(func=cmd_summary)
    add_train_parser(commands)
    add_data_parser(commands)

"""The measuring face of ``cifar-spec``: bench, gate, compare and bench-ddp parse here and call
the harness, nothing more."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from cifar_spec.bench import callgrind, cases, counts, gate, progress, report, suite
from cifar_spec.bench.records import (
    BATCHES,
    COUNT_PROCESSES,
    INSTRUCTIONS,
    JUDGED_BATCHES,
    TIME,
    WORKERS,
    Case,
    batches_help,
)
from cifar_spec.cli.options import (
    STREAM,
    HelpFormatter,
    add_batch_option,
    add_device_option,
    add_metric_options,
    add_progress_option,
    add_workers_options,
    percent,
    pick_device,
)
from cifar_spec.errors import ConfigError
from cifar_spec.files import names_stdout, prepare_output, write_json


def sayer(*outputs: str | None):
    """print, to stdout unless an output names it (`--json /dev/stdout`): then stdout carries
    that document alone and the tables go to stderr. Flushed: a row as soon as it is
    measured, through a pipe too."""
    stream = sys.stderr if any(names_stdout(path) for path in outputs) else sys.stdout
    return lambda line: print(line, file=stream, flush=True)


def check_cache_sim(args: argparse.Namespace) -> None:
    """--cache-sim is a setting of counting: without counts it would change nothing."""
    if args.cache_sim and args.metric == TIME:
        raise ConfigError(
            "--cache-sim simulates the caches under valgrind, so it needs --metric "
            "instructions (or both); drop it to time the step"
        )


def bench_devices(names: list[str] | None) -> list[str]:
    """The devices bench and gate measure: those asked for (each as given, an index kept), else
    every device here."""
    if not names:
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return list(dict.fromkeys(pick_device(name) for name in names))


def judged_cases(args: argparse.Namespace, device: str) -> list[Case]:
    """The cases compare and counting judge: as asked, else eager and the device's fast
    default at the two judged batch sizes."""
    variants = args.variant or cases.default_variants(device)
    batches = args.batch_size or JUDGED_BATCHES[torch.device(device).type]
    return [Case(device, v, b) for v in variants for b in batches]


def check_counting(args: argparse.Namespace, devices: list[str]) -> None:
    """Counting's requirements, refused in one line before any work."""
    for device in devices:
        callgrind.check_countable(device)
    if args.workers is not None and args.workers < 2:
        raise ConfigError(
            f"--workers {args.workers}: counting needs 2 or more processes per environment, "
            "so that the report shows whether they agree"
        )
    compiled = [v for v in args.variant or [] if "compile" in v]
    if compiled:
        raise ConfigError(
            f"--variant {compiled[0]}: torch.compile is not counted (under valgrind it compiles "
            "for longer than a build may take); count the other variants, time this one"
        )
    callgrind.check_tools()


def measure(args: argparse.Namespace) -> Callable[[], list[dict]]:
    """What bench and gate run once their files are checked: the rows of this run."""
    show = progress.shown(args.no_progress)
    if args.metric == INSTRUCTIONS:
        counted = judged_cases(args, "cpu")
        return lambda: suite.count_rows(counted, args.workers, args.cache_sim, show)
    devices = bench_devices(args.device)  # each refused here, before any other check
    return lambda: suite.measure_rows(
        devices, args.variant, args.batch_size, args.workers, args.threads, show
    )


def cmd_bench(args: argparse.Namespace) -> int:
    check_cache_sim(args)
    if args.metric == INSTRUCTIONS:
        check_counting(args, args.device or ["cpu"])  # valgrind's reason first: a GPU won't help
    run = measure(args)
    if args.json:
        prepare_output(args.json)
    rows = run()
    say = sayer(args.json)
    say(report.format_rows(rows) if args.metric == INSTRUCTIONS else report.format_table(rows))
    if args.metric == INSTRUCTIONS:
        say(report.COUNTED)
    if args.json:
        write_json(args.json, rows)
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    check_cache_sim(args)
    if args.metric == INSTRUCTIONS:
        check_counting(args, args.device or ["cpu"])
        metric = gate.count_metric(args.storage, measure(args))
    else:
        run = measure(args)
        devices = bench_devices(args.device)
        show = progress.shown(args.no_progress)

        def profile(planned: list[Case]) -> dict:
            return gate.profile_cases(planned, args.workers, args.threads, show)

        metric = gate.time_metric(args.storage, devices, args.floors, run, args.threads, profile)
    return gate.run(metric, args.save_baseline, args.json, args.threshold, sayer(args.json))


def add_measure_options(p: argparse.ArgumentParser) -> None:
    add_device_option(p, repeatable=True)
    add_batch_option(
        p,
        "batch size",
        f"{batches_help(BATCHES)}; for instructions, {batches_help(JUDGED_BATCHES)}",
    )
    p.add_argument(
        "--variant",
        action="append",
        choices=list(cases.VARIANTS),
        help="variant, repeatable (default: all, and the two loops on the CPU; for "
        "instructions, eager and the CPU's fast default)",
    )
    add_workers_options(
        p,
        f"fresh worker processes each figure is drawn from (default: {WORKERS} for time, "
        f"{COUNT_PROCESSES} counting processes for instructions)",
    )
    add_metric_options(p, both=False)
    add_progress_option(p)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "bench",
        help="time every case against its reference (eager; the loops against the "
        "tutorial's), outside pytest",
        formatter_class=HelpFormatter,
    )
    add_measure_options(p)
    p.add_argument("--json", default=None, help="also write the rows here" + STREAM)
    p.set_defaults(func=cmd_bench)
    add_gate_parser(commands)


def add_gate_parser(commands: argparse._SubParsersAction) -> None:
    g = commands.add_parser(
        "gate",
        help="time every case; fail on a regression against this hardware's "
        "baseline or a speed-up below its floor",
        formatter_class=HelpFormatter,
    )
    add_measure_options(g)
    g.add_argument(
        "--save-baseline",
        action="store_true",
        help="save this run as this hardware's baseline instead of judging",
    )
    g.add_argument(
        "--threshold",
        type=percent,
        default=None,
        help="a case regressed when its step time's 95%% interval (or its range of counts) "
        "lies wholly above 1 + this, a percentage, %% optional (default: "
        f"{gate.GATE_THRESHOLD * 100:.0f}%% for time, "
        f"{counts.COUNT_THRESHOLD * 100:.0f}%% for instructions)",
    )
    g.add_argument("--storage", default=".benchmarks", help="baselines, one folder per hardware")
    g.add_argument(
        "--floors",
        default=None,
        help="folder of DEVICE.json floors (default: those shipped with cifar_spec)",
    )
    g.add_argument(
        "--json", default=".benchmarks/latest.json", help="where this run's rows go" + STREAM
    )
    g.set_defaults(func=cmd_gate)

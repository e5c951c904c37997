"""The measuring face of ``cifar-spec``: bench, gate, compare and bench-ddp parse here and call
the harness, nothing more."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from cifar_spec.bench import bench_ddp, callgrind, cases, compare, counts, gate, report, suite
from cifar_spec.bench.records import (
    BATCHES,
    INSTRUCTIONS,
    JUDGED_BATCHES,
    TIME,
    Case,
    batches_help,
)
from cifar_spec.cli.options import (
    STREAM,
    HelpFormatter,
    add_batch_option,
    add_device_option,
    finite_positive,
    percent,
    pick_device,
    positive_int,
)
from cifar_spec.errors import ConfigError
from cifar_spec.files import prepare_output, write_json


def progress(line: str) -> None:
    print(line, file=sys.stderr)  # stdout keeps the table alone


def say(line: str) -> None:
    print(line, flush=True)  # a row as soon as it is measured, through a pipe too


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
    if args.metric == INSTRUCTIONS:
        counted = judged_cases(args, "cpu")
        return lambda: suite.count_rows(counted, args.workers, args.cache_sim, progress)
    devices = bench_devices(args.device)  # each refused here, before any other check
    return lambda: suite.measure_rows(
        devices, args.variant, args.batch_size, args.workers, args.threads, progress
    )


def cmd_bench(args: argparse.Namespace) -> int:
    if args.metric == INSTRUCTIONS:
        check_counting(args, args.device or ["cpu"])  # valgrind's reason first: a GPU won't help
    run = measure(args)
    if args.json:
        prepare_output(args.json)
    rows = run()
    print(report.format_rows(rows) if args.metric == INSTRUCTIONS else report.format_table(rows))
    if args.metric == INSTRUCTIONS:
        print(report.COUNTED)
    if args.json:
        write_json(args.json, rows)
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    if args.metric == INSTRUCTIONS:
        check_counting(args, args.device or ["cpu"])
        metric = gate.count_metric(args.storage, measure(args))
    else:
        run = measure(args)
        devices = bench_devices(args.device)
        metric = gate.time_metric(args.storage, devices, args.floors, run, args.threads)
    return gate.run(metric, args.save_baseline, args.json, args.threshold, print)


def cmd_compare(args: argparse.Namespace) -> int:
    metrics = [TIME, INSTRUCTIONS] if args.metric == "both" else [args.metric]
    if INSTRUCTIONS in metrics:
        # auto is the CPU for counts; a GPU is refused before asking whether there is one
        device = "cpu" if args.device == "auto" else args.device
        check_counting(args, [device])
    device = pick_device(
        "cpu" if args.device == "auto" and INSTRUCTIONS in metrics else args.device
    )
    for path in filter(None, (args.json, args.markdown)):
        prepare_output(path)
    thresholds = {TIME: args.threshold, INSTRUCTIONS: args.instructions_threshold}
    comparison = compare.run(
        args.baseline,
        args.candidate,
        judged_cases(args, device),
        {m: thresholds[m] for m in metrics},
        args.seconds,
        args.workers,
        args.threads,
        args.cache_sim,
        print,
    )
    compare.write(comparison, args.json, args.markdown)
    return comparison.exit_code


def cmd_bench_ddp(args: argparse.Namespace) -> int:
    if args.json:
        prepare_output(args.json)
    variants = args.variant or cases.default_variants("cpu", data_parallel=True)
    batches = args.batch_size or JUDGED_BATCHES["cpu"]
    rows = bench_ddp.scale_all(variants, batches, args.ranks, args.groups, args.pairs, say)
    if args.json:
        write_json(args.json, rows)
    return 0


def add_workers_options(p: argparse.ArgumentParser, workers: str) -> None:
    p.add_argument(
        "--workers", type=positive_int, default=None, help=f"worker processes: {workers}"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per worker (default: every core)",
    )


def add_metric_options(p: argparse.ArgumentParser, both: bool = True) -> None:
    p.add_argument(
        "--metric",
        choices=[TIME, INSTRUCTIONS, "both"] if both else [TIME, INSTRUCTIONS],
        default=TIME,
        help=METRIC_HELP + (BOTH_HELP if both else ""),
    )
    p.add_argument(
        "--cache-sim",
        action="store_true",
        help="with instructions: simulate the caches too and show callgrind's estimated "
        "cycles (about 2-3x slower)",
    )


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
        "each figure is drawn from this many fresh ones (default: 3 for time, 2 counting "
        "processes for instructions)",
    )
    add_metric_options(p, both=False)


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
    add_compare_parser(commands)
    add_bench_ddp_parser(commands)


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


def add_compare_parser(commands: argparse._SubParsersAction) -> None:
    c = commands.add_parser(
        "compare",
        help="A/B two Python environments side by side (a torch upgrade)",
        formatter_class=HelpFormatter,
    )
    c.add_argument(
        "baseline",
        metavar="BASELINE_PYTHON",
        help="the baseline's python, e.g. old/.venv/bin/python",
    )
    c.add_argument(
        "candidate",
        metavar="CANDIDATE_PYTHON",
        help="the candidate's python, e.g. .venv/bin/python",
    )
    add_device_option(c)  # auto is the CPU for --metric instructions: counts run there only
    add_batch_option(c, "batch size", batches_help(JUDGED_BATCHES))
    c.add_argument(
        "--variant",
        action="append",
        help="variant, repeatable (default: eager and the device's fast default)",
    )
    c.add_argument(
        "--threshold",
        type=percent,
        default=compare.COMPARE_THRESHOLD,
        help="no change within +-this; regression wholly above 1 + this (a percentage, "
        f"%% optional) (default: {compare.COMPARE_THRESHOLD * 100:.0f}%%)",
    )
    c.add_argument(
        "--seconds",
        type=finite_positive,
        default=120.0,
        help="time budget for all cases (inconclusive ones take more pairs)",
    )
    add_workers_options(
        c,
        f"per environment: for time, 3 to start with (up to {compare.MAX_WORKERS} while a "
        "case is inconclusive); for instructions, 2 counting processes",
    )
    add_metric_options(c)
    c.add_argument(
        "--instructions-threshold",
        type=percent,
        default=counts.COUNT_THRESHOLD,
        help="for counts: no change within +-this; regression wholly above 1 + this (a "
        f"percentage, %% optional) (default: {counts.COUNT_THRESHOLD * 100:.0f}%%)",
    )
    c.add_argument("--json", default=None, help="write the verdicts here" + STREAM)
    c.add_argument(
        "--markdown",
        default=None,
        help="also write the verdicts as a markdown table (a pull-request comment)",
    )
    c.set_defaults(func=cmd_compare)


def add_bench_ddp_parser(commands: argparse._SubParsersAction) -> None:
    d = commands.add_parser(
        "bench-ddp",
        help="the DDP step on several CPU processes against one, paired: speed-up and "
        "scaling efficiency",
        formatter_class=HelpFormatter,
    )
    d.add_argument(
        "--variant",
        action="append",
        choices=list(cases.VARIANTS),
        help="variant, repeatable (default: eager and the CPU's fast default)",
    )
    add_batch_option(d, "images per step of each rank", " ".join(map(str, JUDGED_BATCHES["cpu"])))
    d.add_argument("--ranks", type=positive_int, default=2, help="DDP processes (the world size)")
    d.add_argument(
        "--groups", type=positive_int, default=bench_ddp.GROUPS, help="fresh sets of ranks"
    )
    d.add_argument(
        "--pairs", type=positive_int, default=bench_ddp.PAIRS, help="paired rounds per group"
    )
    d.add_argument("--json", default=None, help="also write the rows here" + STREAM)
    d.set_defaults(func=cmd_bench_ddp)


METRIC_HELP = (
    "time: wall time of paired rounds (CUDA events on a GPU); instructions: instruction "
    "counts under valgrind's callgrind, CPU only, which repeat across processes and do not "
    "mind the machine's load. What counts see: one thread; valgrind 3.19 hides AVX-512 and "
    "emulates FMA slowly, so oneDNN runs at AVX and oneMKL at SSE4.2 there (those kernels "
    "are counted, not the AVX-512 ones); cache misses and memory bandwidth only with "
    "--cache-sim (estimated cycles). Needs valgrind on PATH."
)
BOTH_HELP = " both: time, then counts, the counts deciding"

"""The A/B face of ``cifar-spec``: compare (two environments) and bench-ddp (DDP ranks against
one process) parse here and call the harness, nothing more."""

from __future__ import annotations

import argparse
import os

from cifar_spec.bench import bench_ddp, cases, compare, counts, progress
from cifar_spec.bench.records import (
    COUNT_PROCESSES,
    INSTRUCTIONS,
    JUDGED_BATCHES,
    TIME,
    WORKERS,
    batches_help,
)
from cifar_spec.cli.bench import check_cache_sim, check_counting, judged_cases, sayer
from cifar_spec.cli.options import (
    STREAM,
    HelpFormatter,
    add_batch_option,
    add_device_option,
    add_metric_options,
    add_progress_option,
    add_workers_options,
    finite_positive,
    percent,
    pick_device,
    positive_int,
)
from cifar_spec.errors import ConfigError
from cifar_spec.files import prepare_output, write_json


def check_attribute(args: argparse.Namespace, metrics: list[str]) -> None:
    """--attribute and --attribute-trace profile the timed rounds' cases: without time they
    would change nothing (counts attribute every moved case already). The trace folder is
    made, or refused, before any work."""
    flag = "--attribute" if args.attribute else "--attribute-trace" if args.attribute_trace else ""
    if flag and TIME not in metrics:
        raise ConfigError(
            f"{flag} profiles the cases timed with --metric time (or both); counts attribute "
            "every moved case already: drop it, or add --metric both"
        )
    if args.attribute_trace:
        prepare_output(os.path.join(args.attribute_trace, "trace.json"))


def cmd_compare(args: argparse.Namespace) -> int:
    check_cache_sim(args)
    metrics = [TIME, INSTRUCTIONS] if args.metric == "both" else [args.metric]
    check_attribute(args, metrics)
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
        sayer(args.json, args.markdown),
        show=progress.shown(args.no_progress),
        attribute=args.attribute,
        traces=args.attribute_trace,
    )
    compare.write(comparison, args.json, args.markdown)
    return comparison.exit_code


def cmd_bench_ddp(args: argparse.Namespace) -> int:
    if args.ranks < 2:
        raise ConfigError(
            f"--ranks {args.ranks}: one rank is one process, with nothing to scale against; "
            "give 2 or more"
        )
    if args.json:
        prepare_output(args.json)
    variants = args.variant or cases.default_variants("cpu", data_parallel=True)
    batches = args.batch_size or JUDGED_BATCHES["cpu"]
    say = sayer(args.json)
    show = progress.shown(args.no_progress)
    rows = bench_ddp.scale_all(variants, batches, args.ranks, args.groups, args.pairs, say, show)
    if args.json:
        write_json(args.json, rows)
    return 0


def add_parsers(commands: argparse._SubParsersAction) -> None:
    add_compare_parser(commands)
    add_bench_ddp_parser(commands)


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
        f"worker processes per environment: for time, {WORKERS} to start with (up to "
        f"{compare.MAX_WORKERS} while a case is inconclusive); for instructions, "
        f"{COUNT_PROCESSES} counting processes",
    )
    add_metric_options(c)
    c.add_argument(
        "--instructions-threshold",
        type=percent,
        default=counts.COUNT_THRESHOLD,
        help="for counts: no change within +-this; regression wholly above 1 + this (a "
        f"percentage, %% optional) (default: {counts.COUNT_THRESHOLD * 100:.0f}%%)",
    )
    c.add_argument(
        "--attribute",
        action="store_true",
        help="on time, profile every case after its timed rounds and attribute its change to "
        "operators and kernels (a case that moved is always attributed)",
    )
    c.add_argument(
        "--attribute-trace",
        metavar="DIR",
        default=None,
        help="write the profiler trace of each worker of both sides into DIR, for Perfetto or "
        "TensorBoard (CASE-baseline1.json, ...; only cases that are profiled)",
    )
    c.add_argument("--json", default=None, help="write the verdicts here" + STREAM)
    c.add_argument(
        "--markdown",
        default=None,
        help="also write the verdicts as a markdown table (a pull-request comment)",
    )
    add_progress_option(c)
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
    add_progress_option(d)
    d.set_defaults(func=cmd_bench_ddp)

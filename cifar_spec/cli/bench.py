"""The measuring face of ``cifar-spec``: bench, gate, compare and bench-ddp parse here and call
the harness, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cifar_spec.bench import (
    baselines,
    bench_ddp,
    callgrind,
    cases,
    compare,
    counts,
    gate,
    machine,
    records,
    report,
)
from cifar_spec.bench.records import Case
from cifar_spec.bench.suite import WORKERS, Suite, measure_all, worker_threads
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
from cifar_spec.files import prepare_output, write_atomically
from cifar_spec.step import default_step, unsupported

COUNT_PROCESSES = 2  # counting workers per environment: enough to see whether they agree


def kind(device: str) -> str:
    """cpu or cuda: what floors, batch sizes and counting go by (cuda:1 is a cuda)."""
    return torch.device(device).type


def bench_devices(names: list[str] | None) -> list[str]:
    """The devices bench and gate measure: those asked for (each as given, an index kept), else
    every device here."""
    if not names:
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return list(dict.fromkeys(pick_device(name) for name in names))


def progress(line: str) -> None:
    print(line, file=sys.stderr)  # stdout keeps the table alone


def measure_rows(args: argparse.Namespace, log=progress) -> list[dict]:
    with Suite(workers=args.workers or WORKERS, threads=args.threads, log=log) as suite:
        return measure_all(
            suite,
            args.devices,
            args.variant,
            args.batch_size,
            skipped=lambda case, why: log(f"skipped {case.key}: {why}"),
        )


def write_json(path: str, data: object) -> None:
    write_atomically(path, json.dumps(data, indent=1).encode())


def cmd_bench(args: argparse.Namespace) -> int:
    if args.metric == "instructions":
        check_count_device(args)  # valgrind's reason first: a GPU here would not help
    args.devices = bench_devices(args.device)  # each refused here, before any other check
    check_output_paths(args.json)
    if args.metric == "instructions":
        rows = count_rows(args)
        print(report.format_rows(rows))
        print(report.LEGEND.split("; ratio")[0])
    else:
        rows = measure_rows(args)
        print(report.format_table(rows))
    if args.json:
        write_json(args.json, rows)
    return 0


def count_cases(args: argparse.Namespace) -> list:
    """The cases counted by bench and gate: as asked, else eager and the CPU's fast default at
    batch 1 and 64 (as compare's)."""
    variants = args.variant or ["eager", default_step("cpu").name]
    return [Case("cpu", v, b) for v in variants for b in args.batch_size or [1, 64]]


def count_rows(args: argparse.Namespace) -> list[dict]:
    cases = count_cases(args)
    processes = callgrind.count_all(
        {"w": sys.executable},
        args.workers or COUNT_PROCESSES,
        cases,
        args.cache_sim,
        {"w": machine.own_code()},
    )["w"]
    skipped = {case: why for p in processes for case, why in p.unsupported.items()}
    for case, why in skipped.items():
        progress(f"skipped {case.key}: {why}")
    # A case that one process could not run is left out, not judged on the others.
    return counts.as_rows(processes, [c for c in cases if c not in skipped])


def check_count_device(args: argparse.Namespace) -> None:
    """bench and gate count on the CPU: left out, --device means it; any other is refused."""
    for device in args.device or ["cpu"]:
        check_metric(args, device)


def cmd_gate(args: argparse.Namespace) -> int:
    if args.metric == "instructions":
        check_count_device(args)  # valgrind's reason first: a GPU here would not help
    args.devices = bench_devices(args.device)  # each refused here, before any other check
    if args.metric == "instructions":
        return gate_counts(args)
    info = machine.describe(worker_threads(args.threads))  # the workers', not this process's
    path = baselines.baseline_path(Path(args.storage), info)
    baseline = None
    if not args.save_baseline:
        baselines.require_baseline(path, f"for this hardware ({baselines.fingerprint(info)})", "")
        baseline = baselines.load_baseline(path)
        baselines.check_covers(baseline, path, args.devices)
    floors = {
        d: baselines.load_floors(
            Path(args.floors) / f"{kind(d)}.json"
            if args.floors
            else baselines.default_floors(kind(d))
        )
        for d in args.devices
    }
    check_output_paths(args.json, path if args.save_baseline else None)
    rows = measure_rows(args)  # every file is checked above, before this work
    if args.json:
        write_json(args.json, {"machine_info": info, "rows": rows})
    if args.save_baseline:
        baselines.save_baseline(path, info, rows)
        print(f"gate: baseline saved to {path} ({len(rows)} cases, torch {info['torch']})")
        return 0
    threshold = args.threshold if args.threshold is not None else gate.DEFAULT_THRESHOLD
    return gate.judge_run(baseline, info, rows, floors, threshold, print)


def gate_counts(args: argparse.Namespace) -> int:
    info = machine.describe(1)  # counting workers run one thread
    path = baselines.count_baseline_path(Path(args.storage), info)
    baseline = None
    if not args.save_baseline:
        baselines.require_baseline(path, "of counts for this CPU", "--metric instructions ")
        baseline = baselines.load_baseline(path, "instructions")
        baselines.check_covers(baseline, path, ["cpu"], "--metric instructions ")
    check_output_paths(args.json, path if args.save_baseline else None)
    rows = count_rows(args)
    if args.json:
        write_json(args.json, {"machine_info": info, "rows": rows})
    if args.save_baseline:
        baselines.save_baseline(path, info, rows)
        print(
            f"gate: baseline of counts saved to {path} ({len(rows)} cases, torch {info['torch']})"
        )
        return 0
    threshold = args.threshold if args.threshold is not None else counts.DEFAULT_THRESHOLD
    return gate.judge_count_run(baseline, info, rows, threshold, print)


def compare_device(args: argparse.Namespace) -> str:
    """auto: cuda where there is one, except for counts, which run on the CPU only."""
    if args.metric != "time":
        if args.device == "auto":
            return "cpu"
        callgrind.check_device(args.device)  # before asking whether this machine has a GPU
    return pick_device(args.device)


def check_metric(args: argparse.Namespace, device: str) -> None:
    """Counting's requirements, refused in one line before any work."""
    if args.metric == "time":
        return
    callgrind.check_device(device)
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


def cmd_compare(args: argparse.Namespace) -> int:
    device = compare_device(args)
    check_metric(args, device)
    expected = {
        "baseline": compare.check_python(args.baseline),
        "candidate": compare.check_python(args.candidate),
    }
    check_output_paths(args.json, args.markdown)
    variants = args.variant or ["eager", default_step(device).name]
    batches = args.batch_size or ([1, 64] if kind(device) == "cpu" else [1, 256])
    cases = [Case(device, v, b) for v in variants for b in batches]
    results = judged = None
    skipped = []
    thresholds = {}
    out: dict = {"metric": args.metric}
    if args.metric in ("time", "both"):
        time_envs, results = compare.compare(
            args.baseline,
            args.candidate,
            cases,
            args.threshold,
            args.seconds,
            args.workers or compare.WORKERS,
            args.threads,
            expected=expected,
        )
        print(report.format_report(time_envs, results, args.threshold))
        out["environments"] = envs = time_envs
        thresholds["time"] = args.threshold
        out.update(threshold=args.threshold, results=[r.as_dict() for r in results])
    if args.metric in ("instructions", "both"):
        count_envs, judged, skipped = compare.compare_counts(
            args.baseline,
            args.candidate,
            cases,
            args.instructions_threshold,
            args.workers or COUNT_PROCESSES,
            args.cache_sim,
            expected=expected,
        )
        print(report.format_count_report(count_envs, judged, skipped, args.instructions_threshold))
        envs = count_envs if results is None else envs
        out["counting_environments"] = count_envs  # one thread, under callgrind
        thresholds["instructions"] = args.instructions_threshold
        out.update(
            instructions_threshold=args.instructions_threshold,
            counts=[j.as_dict() for j in judged] + [r.as_dict() for r in skipped],
        )
    decided = compare.decide(results, judged)
    if args.metric == "both":
        print("verdicts (instructions decide where they ran; time is shown beside them):")
        for case, (verdict, metric) in decided.items():
            print(f"  {case.device} {case.variant} batch {case.batch}: {verdict} ({metric})")
    out.setdefault("environments", envs)
    out["verdicts"] = [
        {"device": c.device, "variant": c.variant, "batch": c.batch, "verdict": v, "decided_by": m}
        for c, (v, m) in decided.items()
    ]
    if args.json:
        write_json(args.json, out)
    if args.markdown:
        write_atomically(
            args.markdown,
            report.format_markdown(
                envs, results, judged, thresholds, skipped if judged is not None else []
            ).encode(),
        )
    code = records.exit_code([v for v, _ in decided.values()])
    print(compare.closing_line(code, decided))
    return code


def check_output_paths(*paths: str | Path | None) -> None:
    """Every output is checked, its folders made, before the measurement, not after it."""
    for path in filter(None, paths):
        prepare_output(path)


def cmd_bench_ddp(args: argparse.Namespace) -> int:
    check_output_paths(args.json)
    variants = args.variant or ["eager", default_step("cpu", data_parallel=True).name]
    rows = []
    print(report.DDP_HEADER)
    for variant in variants:
        reason = unsupported(cases.VARIANTS[variant], "cpu", data_parallel=True)
        if reason:
            raise ConfigError(f"variant {variant} cannot run under DDP: {reason}")
        for batch in args.batch_size or [1, 64]:
            row = bench_ddp.scaling(variant, batch, args.ranks, args.groups, args.pairs)
            print(report.format_ddp_row(row), flush=True)
            rows.append(row)
    print(
        f"speed-up: total images/s of {args.ranks} ranks (one thread each, gloo) over one "
        "process's at the same batch per rank, the median over quads of paired rounds with "
        "its 95% interval over groups of fresh ranks; eff.: speed-up / ranks"
    )
    if args.json:
        write_json(args.json, rows)
    return 0


def add_measure_options(p: argparse.ArgumentParser) -> None:
    add_device_option(p, repeatable=True)
    add_batch_option(p, "batch size", "1 64 256 on CPU, 1 256 1024 4096 on CUDA")
    p.add_argument(
        "--variant",
        action="append",
        choices=list(cases.VARIANTS),
        help="variant, repeatable (default: all, and the two loops on the CPU; for "
        "instructions, eager and the CPU's fast default at batch 1 and 64)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="fresh worker processes each figure is drawn from (default: 3 for time, "
        "2 counting processes for instructions)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per worker (default: every core)",
    )


def add_parsers(commands: argparse._SubParsersAction) -> None:
    fmt = HelpFormatter
    p = commands.add_parser(
        "bench",
        help="time every case against its reference (eager; the loops against the "
        "tutorial's), outside pytest",
        formatter_class=fmt,
    )
    add_measure_options(p)
    add_metric_options(p, both=False)
    p.add_argument("--json", default=None, help="also write the rows here" + STREAM)
    p.set_defaults(func=cmd_bench)
    g = commands.add_parser(
        "gate",
        help="time every case; fail on a regression against this hardware's "
        "baseline or a speed-up below its floor",
        formatter_class=fmt,
    )
    add_measure_options(g)
    add_metric_options(g, both=False)
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
        f"{gate.DEFAULT_THRESHOLD * 100:.0f}%% for time, "
        f"{counts.DEFAULT_THRESHOLD * 100:.0f}%% for instructions)",
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
    c = commands.add_parser(
        "compare",
        help="A/B two Python environments side by side (a torch upgrade)",
        formatter_class=fmt,
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
    add_batch_option(c, "batch size", "1 64 on CPU, 1 256 on CUDA")
    c.add_argument(
        "--variant",
        action="append",
        help="variant, repeatable (default: eager and the device's fast default)",
    )
    c.add_argument(
        "--threshold",
        type=percent,
        default=0.05,
        help="no change within +-this; regression wholly above 1 + this (a percentage, "
        "%% optional) (default: 5%%)",
    )
    c.add_argument(
        "--seconds",
        type=finite_positive,
        default=120.0,
        help="time budget for all cases (inconclusive ones take more pairs)",
    )
    c.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="workers per environment: for time, 3 to start with (up to 8 while a case is "
        "inconclusive); for instructions, 2 counting processes",
    )
    c.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per worker (default: every core)",
    )
    add_metric_options(c)
    c.add_argument(
        "--instructions-threshold",
        type=percent,
        default=counts.DEFAULT_THRESHOLD,
        help="for counts: no change within +-this; regression wholly above 1 + this (a "
        "percentage, %% optional) (default: 1%%)",
    )
    c.add_argument("--json", default=None, help="write the verdicts here" + STREAM)
    c.add_argument(
        "--markdown",
        default=None,
        help="also write the verdicts as a markdown table (a pull-request comment)",
    )
    c.set_defaults(func=cmd_compare)
    d = commands.add_parser(
        "bench-ddp",
        help="the DDP step on several CPU processes against one, paired: speed-up and "
        "scaling efficiency",
        formatter_class=fmt,
    )
    d.add_argument(
        "--variant",
        action="append",
        choices=list(cases.VARIANTS),
        help="variant, repeatable (default: eager and the CPU's fast default)",
    )
    add_batch_option(d, "images per step of each rank", "1 64")
    d.add_argument("--ranks", type=positive_int, default=2, help="DDP processes (the world size)")
    d.add_argument("--groups", type=positive_int, default=3, help="fresh sets of ranks")
    d.add_argument("--pairs", type=positive_int, default=12, help="paired rounds per group")
    d.add_argument("--json", default=None, help="also write the rows here" + STREAM)
    d.set_defaults(func=cmd_bench_ddp)


METRIC_HELP = (
    "time: wall time of paired rounds (CUDA events on a GPU); instructions: instruction "
    "counts under valgrind's callgrind, CPU only, which repeat across processes and do not "
    "mind the machine's load. What counts see: one thread; valgrind 3.19 hides AVX-512 and "
    "emulates FMA slowly, so oneDNN runs at AVX and oneMKL at SSE4.2 there (those kernels "
    "are counted, not the AVX-512 ones); cache misses and memory bandwidth only with "
    "--cache-sim (estimated cycles). Needs valgrind on PATH. both: time, then counts, "
    "the counts deciding"
)


def add_metric_options(p: argparse.ArgumentParser, both: bool = True) -> None:
    p.add_argument(
        "--metric",
        choices=["time", "instructions", "both"] if both else ["time", "instructions"],
        default="time",
        help=METRIC_HELP if both else METRIC_HELP.rsplit(" both:", 1)[0],
    )
    p.add_argument(
        "--cache-sim",
        action="store_true",
        help="with instructions: simulate the caches too and show callgrind's estimated "
        "cycles (about 2-3x slower)",
    )

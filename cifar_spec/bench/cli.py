"""The bench side of ``cifar-spec``: bench, gate, compare and bench-ddp parse here and call the
harness, nothing more. `cifar_spec.cli` adds these commands to its parser."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cifar_spec.bench import cases
from cifar_spec.cli import HelpFormatter, finite_positive, pick_device, positive_int
from cifar_spec.step import fast_exact_step, fastest_step, unsupported


def percent(text: str) -> float:
    value = finite_positive(text.rstrip("%"))
    if value >= 100:
        raise argparse.ArgumentTypeError(f"must be under 100%, got {text}")
    return value / 100


def bench_devices(name: str) -> list[str]:
    if name == "all":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return [torch.device(pick_device(name)).type]


def progress(line: str) -> None:
    print(line, file=sys.stderr)  # stdout keeps the table alone


def measure_rows(args: argparse.Namespace, log=progress) -> list[dict]:
    from cifar_spec.bench.suite import Suite, measure_all

    with Suite(workers=args.workers, threads=args.threads, log=log) as suite:
        return measure_all(
            suite,
            bench_devices(args.device),
            args.variant,
            args.batch_size,
            skipped=lambda case, why: log(f"skipped {case.key}: {why}"),
        )


def write_json(path: str, data: object) -> None:
    from cifar_spec.files import write_atomically

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=1).encode())


def cmd_bench(args: argparse.Namespace) -> int:
    from cifar_spec.bench import figures

    rows = measure_rows(args)
    print(figures.format_table(rows))
    if args.json:
        write_json(args.json, rows)
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from cifar_spec.bench import figures, gate

    info = figures.machine_info()
    path = gate.baseline_path(Path(args.storage), info)
    if not args.save_baseline and not path.exists():
        raise gate.GateError(
            f"no baseline for this hardware ({gate.fingerprint(info)}) at {path}; make one on "
            "this machine with `cifar-spec gate --save-baseline` (or restore that folder from "
            "an earlier run's artifacts)"
        )
    baseline = None if args.save_baseline else gate.load_baseline(path)
    floors = {
        d: gate.load_floors(
            Path(args.floors) / f"{d}.json" if args.floors else gate.default_floors(d)
        )
        for d in bench_devices(args.device)
    }
    rows = measure_rows(args)  # every file is checked above, before this work
    if args.json:
        write_json(args.json, {"machine_info": info, "rows": rows})
    if args.save_baseline:
        gate.save_baseline(path, info, rows)
        print(f"gate: baseline saved to {path} ({len(rows)} cases, torch {info['torch']})")
        return 0
    return gate.judge_run(baseline, info, rows, floors, args.threshold, print)


def cmd_compare(args: argparse.Namespace) -> int:
    from cifar_spec.bench import compare
    from cifar_spec.bench.paired import Case

    for python in (args.baseline, args.candidate):
        compare.check_python(python)
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    variants = args.variant or ["eager", fastest_step(device).name]
    batches = args.batch_size or ([1, 64] if device == "cpu" else [1, 256])
    cases = [Case(device, v, b) for v in variants for b in batches]
    envs, results = compare.compare(
        args.baseline,
        args.candidate,
        cases,
        args.threshold,
        args.seconds,
        args.workers,
        args.threads,
    )
    print(compare.format_report(envs, results, args.threshold))
    if args.json:
        write_json(
            args.json,
            {
                "threshold": args.threshold,
                "environments": envs,
                "results": [r.as_dict() for r in results],
            },
        )
    code = compare.exit_code(results)
    print(
        {
            0: "compare: no regression",
            1: "compare: REGRESSION",
            3: "compare: inconclusive (give it more --seconds)",
        }[code]
    )
    return code


def cmd_bench_ddp(args: argparse.Namespace) -> int:
    from cifar_spec.bench import bench_ddp

    variants = args.variant or ["eager", fast_exact_step("cpu", data_parallel=True).name]
    rows = []
    print(bench_ddp.HEADER)
    for variant in variants:
        reason = unsupported(cases.VARIANTS[variant], "cpu", data_parallel=True)
        if reason:
            raise ValueError(f"variant {variant} cannot run under DDP: {reason}")
        for batch in args.batch_size or [1, 64]:
            row = bench_ddp.scaling(variant, batch, args.processes, args.groups, args.pairs)
            print(bench_ddp.format_row(row), flush=True)
            rows.append(row)
    print(
        f"speed-up: total images/s of {args.processes} processes (one thread each, gloo) over one "
        "process's at the same batch per process, the median over quads of paired rounds with "
        "its 95% interval over groups of fresh processes; eff.: speed-up / processes"
    )
    if args.json:
        write_json(args.json, rows)
    return 0


def add_measure_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="all",
        help="all (cpu, and cuda where there is one), cpu, cuda or cuda:N",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        action="append",
        help="batch size, repeatable (default: 1 64 256 on CPU, 1 256 1024 4096 on CUDA)",
    )
    p.add_argument(
        "--variant",
        action="append",
        choices=list(cases.VARIANTS),
        help="variant, repeatable (default: all, and the two loops on the CPU)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=3,
        help="fresh worker processes each figure is drawn from",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per worker (default: every core)",
    )


def add_bench_parsers(commands: argparse._SubParsersAction) -> None:
    fmt = HelpFormatter
    p = commands.add_parser(
        "bench", help="time every case against its baseline, outside pytest", formatter_class=fmt
    )
    add_measure_options(p)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.set_defaults(func=cmd_bench)
    g = commands.add_parser(
        "gate",
        formatter_class=fmt,
        help="time every case; fail on a regression against this hardware's "
        "baseline or a speed-up below its floor",
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
        default=gate_threshold(),
        help="a case regressed when its step time's 95%% interval lies wholly above "
        "1 + this (as a fraction or with %%)",
    )
    g.add_argument("--storage", default=".benchmarks", help="baselines, one folder per hardware")
    g.add_argument(
        "--floors",
        default=None,
        help="folder of DEVICE.json floors (default: those shipped with cifar_spec)",
    )
    g.add_argument("--json", default=".benchmarks/latest.json", help="where this run's rows go")
    g.set_defaults(func=cmd_gate)
    c = commands.add_parser(
        "compare",
        formatter_class=fmt,
        help="A/B two Python environments side by side (a torch upgrade)",
    )
    c.add_argument("baseline", help="the baseline's python, e.g. old-venv/bin/python")
    c.add_argument("candidate", help="the candidate's python, e.g. .venv/bin/python")
    c.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: cuda where there is one",
    )
    c.add_argument(
        "--batch-size",
        type=positive_int,
        action="append",
        help="batch size, repeatable (default: 1 64 on CPU, 1 256 on CUDA)",
    )
    c.add_argument(
        "--variant",
        action="append",
        help="variant, repeatable (default: eager and the device's fast default)",
    )
    c.add_argument(
        "--threshold",
        type=percent,
        default=0.05,
        help="no change within +-this; regression wholly above 1 + this",
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
        default=3,
        help="workers per environment to start with (up to 8 while a case is inconclusive)",
    )
    c.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch threads per worker (default: every core)",
    )
    c.add_argument("--json", default=None, help="write the verdicts here")
    c.set_defaults(func=cmd_compare)
    d = commands.add_parser(
        "bench-ddp",
        formatter_class=fmt,
        help="the DDP step on several CPU processes against one, paired: speed-up and "
        "scaling efficiency",
    )
    d.add_argument(
        "--variant",
        action="append",
        choices=list(cases.VARIANTS),
        help="variant, repeatable (default: eager and the CPU's fast default)",
    )
    d.add_argument(
        "--batch-size",
        type=positive_int,
        action="append",
        help="images per step of each process, repeatable (default: 1 64)",
    )
    d.add_argument("--processes", type=positive_int, default=2, help="DDP processes")
    d.add_argument("--groups", type=positive_int, default=3, help="fresh sets of processes")
    d.add_argument("--pairs", type=positive_int, default=12, help="paired rounds per group")
    d.add_argument("--json", default=None, help="also write the rows here")
    d.set_defaults(func=cmd_bench_ddp)


def gate_threshold() -> float:
    from cifar_spec.bench.gate import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD

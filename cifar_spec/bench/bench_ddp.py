"""Data-parallel scaling: the DDP step on N CPU processes against one process, paired.

Each *group* is N fresh processes joined by gloo on 127.0.0.1, one thread
each. Rank 0 holds two arms: the step alone (its own model, one thread, the
per-rank batch) and its rank of the DDP step over the N processes (the same
per-rank batch, N times the images per step). It alternates their rounds
A B B A ... as `paired.py` does; the other ranks wait, idle, for the number of
steps of each DDP round. So every pair compares one process's images/s with
the N processes' on the same cores, under the same load, and the groups are
the clusters of `stats.estimate`: a figure with a 95% interval.

The speed-up is the total images/s of the N processes over the one's; the
scaling efficiency is that over N (1.0: N processes, N times the images).
Weak scaling, as DDP is used: the batch of each process stays the same.

This module is the controller: it starts each group, its ranks running
`ddp_rank.py`, and turns rank 0's timings into the figures.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

from cifar_spec.bench import cases, report
from cifar_spec.bench._handle import kill_group, start_process
from cifar_spec.bench.paired import Samples
from cifar_spec.bench.progress import Progress, hidden
from cifar_spec.bench.spawn import python_command
from cifar_spec.errors import ConfigError, WorkerError
from cifar_spec.step import unsupported

GROUPS = 3  # fresh sets of processes: one process's luck must show in the interval
PAIRS = 12  # pairs of rounds per group
LAUNCH_TIMEOUT = 600.0  # seconds for one group, start-up and warm-up included
FOLLOW_TIMEOUT = 60.0  # seconds the other ranks may take to end after rank 0 has


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_command(variant: str, batch: int, pairs: int) -> list[str]:
    """Every rank's command: this checkout's `ddp_rank.py`, never code from the current folder."""
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds this cifar_spec
    return python_command(
        sys.executable, "cifar_spec.bench.ddp_rank", variant, str(batch), str(pairs), first=root
    )


def rank_environment(rank: int, ranks: int, port: int) -> dict[str, str]:
    """What torchrun would set for rank `rank` of `ranks` on this machine; one thread each."""
    return dict(
        os.environ,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(ranks),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )


def run_group(variant: str, batch: int, ranks: int, pairs: int) -> list[tuple[float, float]]:
    """One group of fresh ranks; rank 0's (alone, together) seconds per step, per pair.

    Each rank runs in a session of its own (`_handle.start_process`). However the group
    ends (done, failed, out of time, Ctrl-C), every rank still running is killed with
    everything it started (`_handle.kill_group`), so that no rank outlives the command.
    """
    command = rank_command(variant, batch, pairs)
    port = free_port()
    started: list[subprocess.Popen] = []
    try:
        for rank in range(ranks):
            stdout = subprocess.PIPE if rank == 0 else subprocess.DEVNULL
            environment = rank_environment(rank, ranks, port)
            started.append(start_process(command, environment, stdout=stdout, text=True))
        out = rank_zero_output(started, variant)
    finally:
        for process in started:
            kill_group(process)
            if process.stdout:
                process.stdout.close()
    return parse_pairs(out, variant)


def rank_zero_output(started: list[subprocess.Popen], variant: str) -> str:
    """What rank 0 printed, once every rank has ended; a WorkerError in one line when rank 0
    failed or a rank ran out of time (the caller stops the group)."""
    try:
        out, _ = started[0].communicate(timeout=LAUNCH_TIMEOUT)
        if started[0].returncode:
            raise WorkerError(
                f"rank 0 of the {variant} group failed (exit {started[0].returncode})"
            )
        for process in started[1:]:
            process.wait(timeout=FOLLOW_TIMEOUT)
    except subprocess.TimeoutExpired as late:
        raise WorkerError(
            f"a rank of the {variant} group was still running after {late.timeout:g} s "
            f"({LAUNCH_TIMEOUT:g} s for rank 0, {FOLLOW_TIMEOUT:g} s more for the others); "
            "every process of the group was stopped"
        ) from None
    return out


def parse_pairs(out: str, variant: str) -> list[tuple[float, float]]:
    """Rank 0's last line: a JSON list of [alone, together] seconds, both positive."""
    try:
        pairs = json.loads(out.strip().splitlines()[-1])
        if (
            all(
                len(pair) == 2 and all(isinstance(v, float) and 0 < v < math.inf for v in pair)
                for pair in pairs
            )
            and pairs
        ):
            return [tuple(pair) for pair in pairs]
    except (ValueError, TypeError, IndexError, RecursionError):
        pass
    raise WorkerError(
        f"rank 0 of the {variant} group ended without its timings ({out.strip()[-80:]!r})"
    )


def scaling(
    variant: str,
    batch: int,
    ranks: int = 2,
    groups: int = GROUPS,
    pairs: int = PAIRS,
    bar: Progress | None = None,
) -> dict:
    """The figures of `variant` at `batch` images per process: images/s alone and together,
    the speed-up of the total with its 95% interval, and the scaling efficiency. `bar`
    counts the groups."""
    if pairs < 2:
        raise ConfigError(
            "--pairs must be at least 2: each ratio comes from a pair A B and a pair B A"
        )
    bar = bar or hidden()
    measured = []
    for group in range(groups):
        bar.doing(f"{variant} batch {batch}: group {group + 1}/{groups} of {ranks} ranks")
        measured.append(run_group(variant, batch, ranks, pairs))
        bar.advance()
    samples = Samples(measured)
    # together's seconds per step over alone's, inverted: the rate of N ranks over one process's
    speedup = samples.ratio().inverted().scaled(ranks)
    return {
        "variant": variant,
        "batch_per_rank": batch,
        "ranks": ranks,
        "alone_images_per_s": batch / samples.arm(0).median,
        "together_images_per_s": ranks * batch / samples.arm(1).median,
        "speedup": speedup.as_dict(),
        "efficiency": speedup.median / ranks,
        "efficiency_ci": [speedup.low / ranks, speedup.high / ranks],
    }


def scale_all(
    variants: list[str],
    batches: list[int],
    ranks: int,
    groups: int,
    pairs: int,
    say,
    show: bool = False,
) -> list[dict]:
    """`scaling` of every variant at every batch size, each row said as it is measured, under
    a header and over a legend, a progress bar of the groups drawn if `show`; a variant that
    cannot run under DDP is refused first."""
    for variant in variants:
        reason = unsupported(cases.VARIANTS[variant], "cpu", data_parallel=True)
        if reason:
            raise ConfigError(f"variant {variant} cannot run under DDP: {reason}")
    say(report.DDP_HEADER)
    rows = []
    with Progress(show, len(variants) * len(batches) * groups, unit="group") as bar:
        for variant in variants:
            for batch in batches:
                rows.append(scaling(variant, batch, ranks, groups, pairs, bar))
                bar.note(report.format_ddp_row(rows[-1]), say)
    say(
        f"speed-up: total images/s of {ranks} ranks (one thread each, gloo) over one "
        "process's at the same batch per rank, the median over quads of paired rounds with "
        "its 95% interval over groups of fresh ranks; eff.: speed-up / ranks"
    )
    for line in report.short_legend([row["speedup"]["ci_note"] for row in rows]):
        say(line)
    return rows

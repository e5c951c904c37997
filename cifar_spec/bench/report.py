"""Every table the harness prints, and compare's markdown: figures in, lines out.

The measured rows (`suite.Suite.row`), the judged cases of the gate and of compare, the
counted cases (`counts.Judged`) and the DDP scaling rows are each formatted here, so that
one figure reads the same in every command.
"""

from __future__ import annotations

import re

from cifar_spec.bench.compare import Result, decide
from cifar_spec.bench.counts import Judged, mean, spread


def format_fraction(row: dict) -> str:
    if row.get("peak_underestimated"):
        return "peak underestimated"
    fraction = row.get("roofline_fraction")
    return "-" if fraction is None else f"{fraction:.1%}"


def format_ratio(row: dict) -> str:
    """'1.26x [1.21, 1.30]', with ' noisy' when the spread is above 10%."""
    if row.get("speedup") is None:
        return "-"
    text = f"{row['speedup']:.2f}x"
    if row.get("speedup_ci"):
        low, high = row["speedup_ci"]
        text += f" [{low:.2f}, {high:.2f}]"
    return text


def format_table(rows: list[dict]) -> str:
    """One line per measured case: rate, spread, speed-up with its 95% CI, roofline fraction."""
    lines = [
        f"{'device':<6} {'variant':<44} {'batch':>5} {'images/s':>10} {'spread':>7} "
        f"{'speed-up [95% CI]':>22} {'roofline':>19}"
    ]
    for r in sorted(rows, key=lambda r: (r["device"], r["batch"], r["variant"] != "eager")):
        spread = f"{r['spread']:.1%}" if r.get("spread") is not None else "-"
        noisy = " noisy" if r.get("noisy") else ""
        lines.append(
            f"{r['device']:<6} {r['variant']:<44} {r['batch']:>5} "
            f"{r['images_per_s']:>10,.0f} {spread:>7} {format_ratio(r):>22} "
            f"{format_fraction(r):>19}{noisy}"
        )
    return "\n".join(lines)


def format_time_judged(judged: list) -> str:
    lines = [f"{'case':<58} {'baseline':>10} {'now':>10} {'now/baseline [95% CI]':>26}  verdict"]
    for j in judged:
        name = " ".join(map(str, j.key))
        lines.append(
            f"{name:<58} {j.baseline * 1e3:>8.3f}ms {j.new * 1e3:>8.3f}ms "
            f"{j.ratio.median:>9.3f} [{j.ratio.low:.3f}, {j.ratio.high:.3f}]  {j.verdict}"
        )
    return "\n".join(lines)


def describe(info: dict) -> str:
    where = info.get("gpu_name") or f"{info['cpu_model']}, {info['threads']} threads"
    rev = info.get("git") or "not a checkout"
    return f"torch {info['torch']}, cifar_spec {rev}, {where} ({info['python']})"


def format_result(r: Result) -> str:
    name = f"{r.case.device} {r.case.variant} batch {r.case.batch}"
    if r.ratio is None:
        return f"{name:<58} {r.verdict}: {r.reason}"
    noisy = " noisy" if r.ratio.noisy else ""
    return (
        f"{name:<58} {r.baseline.median * 1e3:>9.3f}ms {r.candidate.median * 1e3:>9.3f}ms "
        f"{r.ratio.median:>7.3f} [{r.ratio.low:.3f}, {r.ratio.high:.3f}] "
        f"{r.ratio.spread:>6.1%}{noisy}  {r.verdict}"
    )


def format_report(envs: dict, results: list[Result], threshold: float) -> str:
    lines = [
        f"baseline:  {describe(envs['baseline'])}",
        f"candidate: {describe(envs['candidate'])}",
        f"verdicts at +-{threshold:.0%}: the 95% interval of candidate/baseline (step time; "
        "above 1 is slower), median over quads of paired rounds (A B B A); interval: the "
        "wider of a two-level bootstrap and a t-interval of the worker pairs' medians",
        f"{'case':<58} {'baseline':>11} {'candidate':>11} {'ratio [95% CI]':>23} "
        f"{'spread':>6}  verdict",
    ]
    lines += [format_result(r) for r in results]
    return "\n".join(lines)


def format_count_report(
    envs: dict, judged: list[Judged], skipped: list[Result], threshold: float
) -> str:
    lines = [
        f"baseline:  {describe(envs['baseline'])}",
        f"candidate: {describe(envs['candidate'])}",
        f"verdicts at +-{threshold:.1%} on " + LEGEND,
        *header(),
    ]
    for j in judged:
        lines += format_count_judged(j)
    lines += [format_result(r) for r in skipped]
    return "\n".join(lines)


def format_markdown(
    envs: dict,
    time_results: list[Result] | None,
    judged: list[Judged] | None,
    thresholds: dict,
    skipped: list[Result] = (),
) -> str:
    """compare's verdicts as a markdown table, for a pull-request comment."""
    decided = decide(time_results, judged)
    times = {r.case: r for r in time_results or []}
    counts = {j.case: j for j in judged or []}
    lines = [
        "### cifar-spec compare",
        "",
        f"- baseline: {describe(envs['baseline'])}",
        f"- candidate: {describe(envs['candidate'])}",
        "- thresholds: "
        + ", ".join(f"{metric} +-{value:.1%}" for metric, value in thresholds.items()),
        "",
        "| case | time ratio [95% CI] | instructions ratio [range] | verdict | decided by |",
        "|---|---|---|---|---|",
    ]
    for case, (verdict, metric) in decided.items():
        t, j = times.get(case), counts.get(case)
        time_cell = (
            f"{t.ratio.median:.3f} [{t.ratio.low:.3f}, {t.ratio.high:.3f}] {t.verdict}"
            if t and t.ratio
            else (t.verdict if t else "not run")
        )
        count_cell = f"{j.ratio:.4f} [{j.low:.4f}, {j.high:.4f}] {j.verdict}" if j else "not run"
        lines.append(
            f"| {case.device} {case.variant} batch {case.batch} | {time_cell} | {count_cell} "
            f"| **{verdict}** | {metric} |"
        )
    lines += [
        f"| {r.case.device} {r.case.variant} batch {r.case.batch} | | | skipped: {r.reason} | |"
        for r in skipped
        if r.case not in decided
    ]
    moved = [j for j in judged or [] if j.moved]
    for j in moved:
        lines += [
            "",
            f"<details><summary>{j.case.variant} batch {j.case.batch}: the functions that "
            "moved most (instructions per step)</summary>",
            "",
            "| delta | baseline | candidate | function |",
            "|---:|---:|---:|---|",
        ]
        lines += [
            f"| {c - b:+,.0f} | {b:,.0f} | {c:,.0f} | `{truncate(compact(f), 120)}` |"
            for f, b, c in j.top
        ]
        lines.append("</details>")
    return "\n".join(lines) + "\n"


def format_count(value: float) -> str:
    """Instructions as 12.35M or 1.691G."""
    if value >= 1e9:
        return f"{value / 1e9:.3f}G"
    return f"{value / 1e6:.2f}M"


def format_count_judged(j: Judged, width: int = 58) -> list[str]:
    """The case's row, its note, and its top functions."""
    name = f"{j.case.device} {j.case.variant} batch {j.case.batch}"
    agree = max(spread(j.baseline), spread(j.candidate))
    lines = [
        f"{name:<{width}} {format_count(mean(j.baseline)):>9} {format_count(mean(j.candidate)):>9} "
        f"{j.ratio:>8.4f} [{j.low:.4f}, {j.high:.4f}] {agree:>8.3%}  {j.verdict}"
    ]
    if j.cycles:
        lines.append(
            f"    estimated cycles per step: {format_count(j.cycles[0])} -> "
            f"{format_count(j.cycles[1])} ({j.cycles[1] / j.cycles[0]:.4f})"
        )
    if j.note:
        lines.append(f"    note: {j.note}")
    for function, b, c in j.top if j.moved else []:
        name = truncate(compact(function), 110)
        lines.append(f"    {c - b:>+11,.0f} {b:>13,.0f} {c:>13,.0f}  {name}")
    return lines


def compact(name: str) -> str:
    """A C++ name without its parameter lists, for a table: the class and function stay."""
    previous = None
    while previous != name:
        previous = name
        name = re.sub(r"\((?!anonymous namespace\))[^()]+\)", "()", name)
    return name


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def header(width: int = 58) -> list[str]:
    return [
        f"{'case':<{width}} {'baseline':>9} {'candidate':>9} {'ratio [range over processes]':>27} "
        f"{'spread':>8}  verdict",
    ]


LEGEND = (
    "instructions per step (callgrind, one thread, oneDNN at AVX and oneMKL at SSE4.2, "
    "mean over processes); ratio candidate / baseline with its range: the lowest candidate "
    "over the highest baseline to the reverse; spread: how far one side's processes are "
    "apart (max / min - 1); under a moved case, the functions whose instructions per step "
    "moved most: delta, baseline, candidate"
)


def format_rows(rows: list[dict]) -> str:
    lines = [
        f"{'case':<58} {'instructions/step':>17} {'spread':>8} {'est. cycles/step':>16}  processes"
    ]
    for r in rows:
        name = f"{r['device']} {r['variant']} batch {r['batch']}"
        cycles = r["estimated_cycles_per_step"]
        lines.append(
            f"{name:<58} {mean(r['instructions_per_step']):>17,.0f} {r['spread']:>8.3%} "
            f"{format_count(cycles) if cycles else '-':>16}  {len(r['instructions_per_step'])}"
        )
    return "\n".join(lines)


def format_ddp_row(row: dict) -> str:
    s = row["speedup"]
    return (
        f"{row['variant']:<46} {row['batch_per_rank']:>5} {row['ranks']:>3} "
        f"{row['alone_images_per_s']:>9.0f} {row['together_images_per_s']:>9.0f} "
        f"{s['median']:>6.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}] "
        f"{row['efficiency']:>6.0%}{' noisy' if s['noisy'] else ''}"
    )


DDP_HEADER = (
    f"{'variant':<46} {'batch':>5} {'n':>3} {'alone/s':>9} {'ddp/s':>9} "
    f"{'speed-up [95% CI]':>23} {'eff.':>6}"
)

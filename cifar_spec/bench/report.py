"""Every table the harness prints, and compare's markdown: figures in, lines out.

The measured rows (`suite.Suite.row`), the counted rows, the judged cases of the gate and of
compare (`records.Judged`, either metric) and the DDP scaling rows are each formatted here, so
that one figure reads the same in every command. A formatter: it imports the records, never
a module that starts a process.
"""

from __future__ import annotations

import re

from cifar_spec.bench.attribution import REMAINDER
from cifar_spec.bench.records import INSTRUCTIONS, TIME, Comparison, Judged
from cifar_spec.bench.stats import NOISY_SPREAD


def format_fraction(row: dict) -> str:
    if row.get("peak_underestimated"):
        return "peak underestimated"
    fraction = row.get("roofline_fraction")
    return "-" if fraction is None else f"{fraction:.1%}"


SHORT = "*"  # beside an interval that is not a 95% CI (too few samples); the legend says what


def short_mark(note: str | None) -> str:
    return SHORT if note else ""


def short_legend(notes: list[str]) -> list[str]:
    """A legend line per kind of interval short of 95% that a table showed (none if none)."""
    return [f"{SHORT} {note}" for note in dict.fromkeys(n for n in notes if n)]


def format_ratio(row: dict) -> str:
    """'1.26x [1.21, 1.30]', marked '*' when the interval is not a 95% CI."""
    if row.get("speedup") is None:
        return "-"
    text = f"{row['speedup']:.2f}x"
    if row.get("speedup_ci"):
        low, high = row["speedup_ci"]
        text += f" [{low:.2f}, {high:.2f}]{short_mark(row.get('speedup_ci_note'))}"
    return text


def format_table(rows: list[dict]) -> str:
    """One line per measured case: rate, spread, speed-up with its 95% CI, roofline fraction."""
    lines = [
        f"{'device':<6} {'variant':<44} {'batch':>5} {'images/s':>10} {'spread':>7} "
        f"{'speed-up [95% CI]':>22} {'roofline':>19}"
    ]
    for r in sorted(rows, key=lambda r: (r["device"], r["batch"], r["variant"] != "eager")):
        spread = f"{r['spread']:.1%}" if r.get("spread") is not None else "-"
        # The mark says what the column beside it shows (a spread above NOISY_SPREAD, as the
        # docs name it), not a figure the table leaves out (the speed-up's own spread).
        noisy = " noisy" if (r.get("spread") or 0) > NOISY_SPREAD else ""
        lines.append(
            f"{r['device']:<6} {r['variant']:<44} {r['batch']:>5} "
            f"{r['images_per_s']:>10,.0f} {spread:>7} {format_ratio(r):>22} "
            f"{format_fraction(r):>19}{noisy}"
        )
    return "\n".join(lines + short_legend([r.get("speedup_ci_note", "") for r in rows]))


def plural(count: int, word: str) -> str:
    """'1 case', '2 cases'."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def describe(info: dict) -> str:
    where = info.get("gpu_name") or f"{info['cpu_model']}, {plural(info['threads'], 'thread')}"
    rev = info.get("git") or "not a checkout"
    return f"torch {info['torch']}, cifar_spec {rev}, {where} ({info['python']})"


WIDTH = 58  # the case column


# What a time verdict's interval is, by where its two sides come from.
PAIRED = (
    "the 95% interval of candidate/baseline (step time; above 1 is slower), median over quads "
    "of paired rounds (A B B A); interval: the wider of a two-level bootstrap and a t-interval "
    "of the worker pairs' medians"
)
RUNS = (
    "the 95% interval of now/baseline (step time; above 1 is slower), median over both runs' "
    "rounds; interval: the wider of a two-level bootstrap of both runs and Welch's t-interval "
    "of their workers' medians"
)
COUNTED = (
    "instructions per step outside the C and Python allocators (callgrind, one thread, oneDNN "
    "at AVX and oneMKL at SSE4.2, mean over processes; docs/instruction-counts.md says why)"
)


def count_ratio(side: str) -> str:
    """What a count verdict's columns mean, `side` naming the candidate (or this run)."""
    return (
        f"ratio {side} / baseline with its range: the lowest {side} over the highest baseline "
        "to the reverse; disagree: how far one side's processes are apart (max / min - 1); "
        "under a moved case, the ATen operators whose own instructions per step moved most, "
        "where each ran, and the kernels under each"
    )


def ratio_estimate(j: Judged) -> dict:
    """The ratio's estimate, as `stats.Estimate.as_dict` saved it (empty for counts)."""
    return j.figures.get("estimates", {}).get("ratio", {})


def time_line(j: Judged) -> str:
    """A case judged on time: each side's median step, the ratio, its 95% interval (marked
    where it is not one) and spread."""
    if j.ratio is None:
        return f"{j.case.name:<{WIDTH}} {j.verdict}: {j.reason}"
    ratio = ratio_estimate(j)
    spread = f"{ratio['spread']:>6.1%}" if "spread" in ratio else f"{'-':>6}"
    noisy = " noisy" if ratio.get("noisy") else ""
    interval = f"[{j.low:.3f}, {j.high:.3f}]{short_mark(ratio.get('ci_note'))}"
    return (
        f"{j.case.name:<{WIDTH}} {j.baseline * 1e3:>9.3f}ms {j.candidate * 1e3:>9.3f}ms "
        f"{j.ratio:>7.3f} {interval:<15} {spread}{noisy}  {j.verdict}"
    )


def count_lines(j: Judged) -> list[str]:
    """A case judged on counts: its row, its note, and, where it moved, the operators whose
    instructions moved most, each with its kernels."""
    if j.ratio is None:
        return [f"{j.case.name:<{WIDTH}} {j.verdict}: {j.reason}"]
    apart = max(j.figures["disagreement"].values())
    lines = [
        f"{j.case.name:<{WIDTH}} {format_count(j.baseline):>9} {format_count(j.candidate):>9} "
        f"{j.ratio:>8.4f} [{j.low:.4f}, {j.high:.4f}] {apart:>8.3%}  {j.verdict}"
    ]
    cycles = j.figures.get("estimated_cycles_per_step")
    if cycles:
        lines.append(
            f"    estimated cycles per step: {format_count(cycles[0])} -> "
            f"{format_count(cycles[1])} ({cycles[1] / cycles[0]:.4f})"
        )
    if j.note:
        lines.append(f"    note: {j.note}")
    if not j.moved:
        return lines  # the attribution is in --json
    for moved in j.top:  # by ATen operator, the kernels under each
        lines += [f"    {line}" for line in operator_lines(moved)]
    if not j.top:  # counted before operators were read: the functions alone
        for f in j.figures["top_functions"]:
            name = truncate(compact(f["function"]), 110)
            figures = f"{f['delta']:>+11,.0f} {f['baseline']:>13,.0f} {f['candidate']:>13,.0f}"
            lines.append(f"    {figures}  {name}")
    return lines


def operator_lines(moved) -> list[str]:
    """An operator whose own instructions per step moved (`operators.OperatorDelta`), where it
    ran and its share of the case's change, then the kernels under it that moved most:
    `aten::cumsum under aten::max_pool2d  +5,414,151 (99.0% of the change)  own 0 -> 5,414,151`.
    """
    where = f" under {moved.parent}" if moved.parent else ""
    head = (
        f"{moved.operator}{where}  {moved.delta:+,.0f} ({moved.share:.1%} of the change)  "
        f"own {moved.baseline:,.0f} -> {moved.candidate:,.0f}"
    )
    return [head] + [f"    {k.delta:+,.0f}  {k.function}" for k in moved.kernels]


def milliseconds(seconds: float, sign: str = "") -> str:
    return f"{seconds * 1e3:{sign}.3f}"


def time_delta(delta: float, low: float, high: float) -> str:
    """A change in seconds per step with its 95% interval: '+3.214 ms [+3.101, +3.330]'."""
    return f"{milliseconds(delta, '+')} ms [{milliseconds(low, '+')}, {milliseconds(high, '+')}]"


def row_delta(row) -> str:
    """`time_delta` of an attributed row (`operators.OperatorDelta` or `KernelDelta`)."""
    return time_delta(row.delta, row.low, row.high)


def presence_mark(row) -> str:
    return f"  {row.presence}" if row.presence else ""


def attribution_lines(j: Judged) -> list[str]:
    """Under a case attributed from its profiled rounds (`attribution.attributed`): the
    profiled step's change, the operators that moved most, each with the kernels under it,
    and the remainder with how much of the change the operators explain."""
    figures = j.figures.get("attribution")
    if not figures:
        return []
    step, steps = figures["step"], figures["profiled_steps"]
    lines = [
        f"    profiled steps ({sum(steps['baseline'])} + {sum(steps['candidate'])}, "
        f"{figures['device']}): {milliseconds(step['baseline'])} -> "
        f"{milliseconds(step['candidate'])} ms per step, "
        f"{time_delta(step['delta'], step['delta_low'], step['delta_high'])}"
    ]
    shares = has_shares(step)
    for row in j.top:
        lines += [f"    {line}" for line in time_operator_lines(row, figures["explained"], shares)]
    return lines


def has_shares(step: dict) -> bool:
    """Whether the profiled step's change is far enough from 0 to share out: a share of a
    change that may be nothing is noise divided by noise (-1635% was seen)."""
    return step["delta_low"] > 0 or step["delta_high"] < 0


def explains(explained: float, shares: bool) -> str:
    """What the operators explain of the change, or why no share of it is said."""
    if shares:
        return f"the operators explain {explained:.1%}"
    return "no shares: the profiled step's change is within its interval of 0"


def time_operator_lines(row, explained: float, shares: bool = True) -> list[str]:
    """An operator whose own time per step moved (`operators.OperatorDelta` with an interval),
    where it ran, its share of the change, then the kernels under it; the remainder's row
    says how much of the change the operators explain. Without `shares` (the step's own
    change is within its interval of 0), no share is said."""
    share = f" ({row.share:.1%} of the change)" if shares else ""
    if row.operator == REMAINDER:
        return [f"{row.operator}  {row_delta(row)}{share}; {explains(explained, shares)}"]
    where = f" under {row.parent}" if row.parent else ""
    head = (
        f"{row.operator}{where}  {row_delta(row)}{share}  "
        f"own {milliseconds(row.baseline)} -> {milliseconds(row.candidate)} ms"
        f"{presence_mark(row)}"
    )
    return [head] + [
        f"    {row_delta(k)}  {k.function}{' ' + k.detail if k.detail else ''}{presence_mark(k)}"
        for k in row.kernels
    ]


def judged_table(
    judged: list[Judged], metric: str, threshold: float, sides: tuple[str, str], legend: str = RUNS
) -> list[str]:
    """The legend, the header and a line (or lines) per judged case of one metric; `sides`
    names the two columns (baseline and candidate, or baseline and now)."""
    base, cand = sides
    if metric == TIME:
        lines = [
            f"verdicts at +-{threshold:.0%}: {legend}",
            f"{'case':<{WIDTH}} {base:>11} {cand:>11} {'ratio [95% CI]':>23} {'spread':>6}"
            "  verdict",
        ]
        notes = [ratio_estimate(j).get("ci_note", "") for j in judged]
        rows = [line for j in judged for line in [time_line(j), *attribution_lines(j)]]
        return lines + rows + short_legend(notes)
    lines = [
        f"verdicts at +-{threshold:.1%} on {COUNTED}; {count_ratio(cand)}",
        f"{'case':<{WIDTH}} {base:>9} {cand:>9} {'ratio [range over processes]':>27} "
        f"{'disagree':>8}  verdict",
    ]
    return lines + [line for j in judged for line in count_lines(j)]


def environments(envs: dict) -> list[str]:
    return [f"baseline:  {describe(envs['baseline'])}", f"candidate: {describe(envs['candidate'])}"]


def time_report(c: Comparison) -> str:
    table = judged_table(
        c.judged[TIME], TIME, c.thresholds[TIME], ("baseline", "candidate"), PAIRED
    )
    return "\n".join(environments(c.environments[TIME]) + table)


def count_report(c: Comparison) -> str:
    threshold = c.thresholds[INSTRUCTIONS]
    table = judged_table(c.judged[INSTRUCTIONS], INSTRUCTIONS, threshold, ("baseline", "candidate"))
    return "\n".join(environments(c.environments[INSTRUCTIONS]) + table)


def verdict_lines(c: Comparison) -> list[str]:
    """With both metrics, the verdict of each case and what decided it; then the closing line,
    which says what to do about an inconclusive run."""
    lines = []
    if len(c.judged) == 2:
        lines.append("verdicts (instructions decide where they ran; time is shown beside them):")
        lines += [f"  {case.name}: {j.verdict} ({j.metric})" for case, j in c.decided.items()]
    return lines + [closing_line(c)]


def closing_line(c: Comparison) -> str:
    code = c.exit_code
    if code == 0:
        return "compare: no regression"
    if code == 1:
        return "compare: REGRESSION"
    metrics = {j.metric for j in c.decided.values() if j.verdict == "inconclusive"}
    if not metrics:
        return "compare: inconclusive (no case was judged: every one was skipped)"
    if metrics == {TIME}:
        return "compare: inconclusive (give it more --seconds)"
    return "compare: inconclusive (counting processes of one side disagree: see the notes)"


def markdown(c: Comparison) -> str:
    """compare's verdicts as a markdown table, for a pull-request comment."""
    envs = c.environments.get(TIME) or c.environments[INSTRUCTIONS]
    times = {j.case: j for j in c.judged.get(TIME, [])}
    counted = {j.case: j for j in c.judged.get(INSTRUCTIONS, [])}
    lines = [
        "### cifar-spec compare",
        "",
        f"- baseline: {describe(envs['baseline'])}",
        f"- candidate: {describe(envs['candidate'])}",
        "- thresholds: "
        + ", ".join(f"{metric} +-{value:.1%}" for metric, value in c.thresholds.items()),
        "",
        "| case | time ratio [95% CI] | instructions ratio [range] | verdict | decided by |",
        "|---|---|---|---|---|",
    ]
    for case, j in c.decided.items():
        if j.ratio is None and j.metric == INSTRUCTIONS and case not in times:
            lines.append(f"| {case.name} | | | skipped: {j.reason} | |")
            continue
        lines.append(
            f"| {case.name} | {markdown_cell(times.get(case), 3)} | "
            f"{markdown_cell(counted.get(case), 4)} | **{j.verdict}** | {j.metric} |"
        )
    legend = short_legend([ratio_estimate(j).get("ci_note", "") for j in c.judged.get(TIME, [])])
    lines += ["", *(line.replace(SHORT, "\\" + SHORT, 1) for line in legend)] if legend else []
    for j in c.judged.get(TIME, []):
        if "attribution" in j.figures:
            lines += markdown_time_attribution(j)
    for j in c.judged.get(INSTRUCTIONS, []):
        if j.moved:
            lines += markdown_attribution(j)
    return "\n".join(lines) + "\n"


def markdown_time_attribution(j: Judged) -> list[str]:
    """A case attributed from its profiled rounds, in a collapsed table: its operators that
    moved most, the kernels under each, and the remainder with what the operators explain."""
    figures = j.figures["attribution"]
    step = figures["step"]
    shares = has_shares(step)
    lines = [
        "",
        f"<details><summary>{j.case.name}: where the time went (profiled steps, "
        f"{milliseconds(step['baseline'])} -> {milliseconds(step['candidate'])} ms per step; "
        f"{explains(figures['explained'], shares)})</summary>",
        "",
        "| delta [95% CI] | baseline ms | candidate ms | share | operator, or kernel under it |",
        "|---:|---:|---:|---:|---|",
    ]
    for row in j.top:
        where = f" (under `{row.parent}`)" if row.parent else ""
        lines.append(
            f"| {row_delta(row)} | {milliseconds(row.baseline)} | {milliseconds(row.candidate)} "
            f"| {f'{row.share:.1%}' if shares else ''} | `{row.operator}`{where}"
            f"{presence_mark(row)} |"
        )
        lines += [
            f"| {row_delta(k)} | {milliseconds(k.baseline)} | {milliseconds(k.candidate)} | | "
            f"&nbsp;&nbsp;`{truncate(k.function, 120)}`{presence_mark(k)} |"
            for k in row.kernels
        ]
    return lines + ["</details>"]


def markdown_attribution(j: Judged) -> list[str]:
    """A moved case's operators and kernels (or, counted before operators were read, its
    functions) in a collapsed table."""
    lines = [
        "",
        f"<details><summary>{j.case.name}: what moved most (instructions per step)</summary>",
        "",
        "| delta | baseline | candidate | operator, or kernel under it |",
        "|---:|---:|---:|---|",
    ]
    for moved in j.top:
        where = f" (under `{moved.parent}`)" if moved.parent else ""
        lines.append(
            f"| {moved.delta:+,.0f} | {moved.baseline:,.0f} | {moved.candidate:,.0f} | "
            f"`{moved.operator}`{where}, {moved.share:.1%} of the change |"
        )
        lines += [
            f"| {k.delta:+,.0f} | {k.baseline:,.0f} | {k.candidate:,.0f} | "
            f"&nbsp;&nbsp;`{truncate(k.function, 120)}` |"
            for k in moved.kernels
        ]
    if not j.top:
        lines += [
            f"| {f['delta']:+,.0f} | {f['baseline']:,.0f} | {f['candidate']:,.0f} | "
            f"`{truncate(compact(f['function']), 120)}` |"
            for f in j.figures["top_functions"]
        ]
    return lines + ["</details>"]


def markdown_cell(j: Judged | None, digits: int) -> str:
    if j is None:
        return "not run"
    if j.ratio is None:
        return j.verdict
    mark = short_mark(ratio_estimate(j).get("ci_note")).replace(SHORT, "\\" + SHORT)
    return f"{j.ratio:.{digits}f} [{j.low:.{digits}f}, {j.high:.{digits}f}]{mark} {j.verdict}"


def format_count(value: float) -> str:
    """Instructions as 12.35M or 1.691G."""
    if value >= 1e9:
        return f"{value / 1e9:.3f}G"
    return f"{value / 1e6:.2f}M"


def compact(name: str) -> str:
    """A C++ name without its parameter lists, for a table: the class and function stay."""
    previous = None
    while previous != name:
        previous = name
        name = re.sub(r"\((?!anonymous namespace\))[^()]+\)", "()", name)
    return name


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_rows(rows: list[dict]) -> str:
    lines = [
        f"{'case':<{WIDTH}} {'instructions/step':>17} {'disagree':>8} {'est. cycles/step':>16}  "
        "processes"
    ]
    for r in rows:
        name = f"{r['device']} {r['variant']} batch {r['batch']}"
        cycles = r["estimated_cycles_per_step"]
        lines.append(
            f"{name:<{WIDTH}} {mean(r['instructions_per_step']):>17,.0f} {r['disagreement']:>8.3%} "
            f"{format_count(cycles) if cycles else '-':>16}  {len(r['instructions_per_step'])}"
        )
    lines.append(
        "instructions/step: all a step runs, mean over processes; disagree: how far the "
        "processes are apart (max / min - 1) outside the C and Python allocators, whose share "
        "moves with a process's history (docs/instruction-counts.md)"
    )
    return "\n".join(lines)


def format_ddp_row(row: dict) -> str:
    s = row["speedup"]
    return (
        f"{row['variant']:<46} {row['batch_per_rank']:>5} {row['ranks']:>3} "
        f"{row['alone_images_per_s']:>9.0f} {row['together_images_per_s']:>9.0f} "
        f"{s['median']:>6.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
        f"{short_mark(s.get('ci_note')) or ' '}"
        f"{row['efficiency']:>6.0%}{' noisy' if s['noisy'] else ''}"
    )


DDP_HEADER = (
    f"{'variant':<46} {'batch':>5} {'n':>3} {'alone/s':>9} {'ddp/s':>9} "
    f"{'speed-up [95% CI]':>23} {'eff.':>6}"
)

"""The numerics-sensitive part of the spec under every CPU dispatch this machine offers.

`make test-dispatch` (or `python tests/dispatch_matrix.py`) runs the spec's numeric files
once per setting of ATen's kernels (`ATEN_CPU_CAPABILITY`: default, avx2, avx512, as far as
the CPU goes; torch.compile's generated code follows it) times oneDNN's (`ONEDNN_MAX_CPU_ISA`:
each level the CPU has, and none set), each run in a fresh pytest session with its own
torch.compile cache, and the machine's own choice once more at every core in one process.
Every `assert_close` records how much of its tolerance it used (tests/conftest.py,
`record_drifts`); the table printed at the end has the most each test used under any
setting, and where. Exit 0 when every setting passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = [
    "tests/test_step.py",
    "tests/test_manual_backward.py",
    "tests/test_training_loop.py",
    "tests/test_losses.py",
    "tests/test_distributed.py",
    # No tolerance: 20,000 steps whose path each dispatch bends another way, as another
    # seed would; the curve's shape must survive every one.
    "tests/test_loss_curve.py",
]

# oneDNN's ISA limits on x86, lowest first, each with the /proc/cpuinfo flags it needs.
ONEDNN_LEVELS = {
    "SSE41": {"sse4_1"},
    "AVX2": {"avx2"},
    "AVX512_CORE": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "AVX512_CORE_VNNI": {"avx512_vnni"},
    "AVX512_CORE_BF16": {"avx512_bf16"},
    "AVX512_CORE_AMX": {"amx_tile", "amx_bf16"},
}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split()}


def aten_levels(best: str) -> list[str]:
    """ATen's capabilities up to `best`, the one torch picks here (torch's own name for it)."""
    if platform.machine() in ("x86_64", "AMD64"):
        order = ["default", "avx2", "avx512"]
        return order[: order.index(best.lower()) + 1] if best.lower() in order else ["default"]
    return ["default"] if best.lower() == "default" else ["default", best.lower()]


def onednn_levels(flags: set[str]) -> list[str | None]:
    """The oneDNN ISA limits this CPU can honour (x86; elsewhere only oneDNN's own choice),
    then None: no limit."""
    levels: list[str | None] = []
    if platform.machine() in ("x86_64", "AMD64"):
        for name, needs in ONEDNN_LEVELS.items():
            if not needs <= flags:
                break  # each level includes the ones below it
            levels.append(name)
    return [*levels, None]


def settings(python: str) -> list[dict]:
    """Every (ATen, oneDNN, processes) setting to run: the product of the two libraries'
    levels with one thread per process (two pytest workers), then no setting at every core."""
    best = subprocess.run(
        [python, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    found = [
        {"aten": aten, "onednn": onednn, "workers": 2}
        for aten in aten_levels(best)
        for onednn in onednn_levels(cpu_flags())
    ]
    return [*found, {"aten": None, "onednn": None, "workers": 1}]


def label(setting: dict) -> str:
    aten, onednn = setting["aten"] or "(torch's)", setting["onednn"] or "(oneDNN's)"
    threads = "1 thread a worker" if setting["workers"] > 1 else "every core"
    return f"ATEN_CPU_CAPABILITY={aten} ONEDNN_MAX_CPU_ISA={onednn}, {threads}"


def run(python: str, setting: dict, drifts: Path) -> tuple[bool, float, str]:
    env = dict(os.environ)
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        env.pop(name, None)
    if setting["aten"]:
        env["ATEN_CPU_CAPABILITY"] = setting["aten"]
    if setting["onednn"]:
        env["ONEDNN_MAX_CPU_ISA"] = setting["onednn"]
    env["CIFAR_SPEC_DRIFTS"] = str(drifts)
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n"]
    command += [str(setting["workers"]), *FILES]
    start = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return done.returncode == 0, time.monotonic() - start, summary


def worst(drifts: list[Path], labels: list[str]) -> dict[str, tuple[float, str, dict]]:
    """Per test function (its parametrizations together): the largest share of its tolerance
    used, the test and setting that used it, the tolerance."""
    found: dict[str, tuple[float, str, dict]] = {}
    for path, where in zip(drifts, labels):
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            function = row["test"].split("[")[0]
            tolerance = {"rtol": row["rtol"], "atol": row["atol"]}
            if function not in found or row["used"] > found[function][0]:
                found[function] = (row["used"], f"{row['test']}, {where}", tolerance)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="default: this Python")
    parser.add_argument("--list", action="store_true", help="print the settings and stop")
    args = parser.parse_args(argv)
    chosen = settings(args.python)
    if args.list:
        print("\n".join(label(s) for s in chosen))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="cifar-spec-dispatch-"))
    paths, labels, failed = [], [], []
    for number, setting in enumerate(chosen):
        paths.append(folder / f"drifts-{number}.jsonl")
        labels.append(label(setting))
        ok, seconds, summary = run(args.python, setting, paths[-1])
        print(f"{'ok  ' if ok else 'FAIL'} {labels[-1]}: {summary} ({seconds:.0f} s)", flush=True)
        if not ok:
            failed.append(labels[-1])
    print("\nthe most of its tolerance each comparison used, under any setting (and where):")
    for test, (used, where, tolerance) in sorted(worst(paths, labels).items()):
        print(f"{used:9.2e}  rtol {tolerance['rtol']:.0e} atol {tolerance['atol']:.0e}  {test}")
        print(f"{'':11}{where}")
    print(f"\n{len(chosen) - len(failed)} of {len(chosen)} settings passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Progress of long measurements: a bar on a terminal's stderr that clears, and nothing else."""

import io
import re
import sys

import pytest

from cifar_spec.bench import bench_ddp, compare, progress, suite
from cifar_spec.bench.paired import BLOCK, measure_pairs, pairs_to_take
from cifar_spec.cli import main


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "no_progress, stream, drawn",
    [(False, Terminal(), True), (True, Terminal(), False), (False, io.StringIO(), False)],
    ids=["terminal", "no-progress", "not-a-terminal"],
)
def test_a_bar_is_drawn_only_on_a_terminal_and_not_under_no_progress(no_progress, stream, drawn):
    assert progress.shown(no_progress, stream) == drawn


def test_a_drawn_bar_names_what_is_done_and_clears_when_closed():
    screen = Terminal()
    with progress.Progress(True, 4, stream=screen) as bar:
        bar.doing("cpu eager batch 1: pair 1/4")
        bar.advance("cpu eager batch 1: pair 2/4")
        assert bar.bar.n == 1 and bar.bar.desc == "cpu eager batch 1: pair 2/4"
    drawn = screen.getvalue()
    assert "cpu eager batch 1: pair 1/4:   0%" in drawn and "0/4" in drawn
    assert drawn.endswith("\r") and drawn.rsplit("\r", 2)[-2].strip() == ""  # cleared


def test_a_hidden_bar_writes_nothing_but_its_notes():
    screen = Terminal()
    with progress.Progress(False, 4, stream=screen) as bar:
        bar.doing("cpu eager batch 1")
        bar.advance()
        bar.note("skipped cpu-bf16-1: no bfloat16 here")
    assert screen.getvalue() == "skipped cpu-bf16-1: no bfloat16 here\n"


class Arm:
    def round(self) -> tuple[float, None]:
        return 1.0, None


def test_each_pair_of_rounds_is_a_step_and_the_pairs_taken_are_known_beforehand():
    ticks = []
    arms = [(Arm(), Arm()), (Arm(), Arm())]
    planned = pairs_to_take(None, len(arms), 6)
    samples = measure_pairs(arms, 6, tick=lambda: ticks.append(1))
    assert len(ticks) == samples.pairs == planned == 2 * 2 * BLOCK
    arms.append((Arm(), Arm()))  # compare grows a worker pair: a pass over all three
    more = pairs_to_take(samples, len(arms), 6)
    measure_pairs(arms, 6, samples, tick=lambda: ticks.append(1))
    assert more == 3 * 2 * BLOCK and len(ticks) == samples.pairs == planned + more


def shown_by(monkeypatch, argv: list[str]) -> bool:
    """The `show` that the command hands the harness, stderr being a terminal."""
    seen = {}

    def measure_rows(*args):
        seen["show"] = args[-1]
        return []

    def scale_all(*args):
        seen["show"] = args[-1]
        return []

    def run(*args, show, **options):  # compare.run: its options by name
        seen["show"] = show
        raise SystemExit(0)

    monkeypatch.setattr(suite, "measure_rows", measure_rows)
    monkeypatch.setattr(bench_ddp, "scale_all", scale_all)
    monkeypatch.setattr(compare, "run", run)
    monkeypatch.setattr(sys, "stderr", Terminal())
    try:
        main(argv)
    except SystemExit:
        pass
    return seen["show"]


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--device", "cpu"],
        ["gate", "--device", "cpu", "--save-baseline"],
        ["compare", sys.executable, sys.executable, "--device", "cpu"],
        ["bench-ddp"],
    ],
    ids=["bench", "gate", "compare", "bench-ddp"],
)
def test_every_long_command_draws_its_bar_on_a_terminal_unless_told_no_progress(
    monkeypatch, tmp_path, argv
):
    monkeypatch.chdir(tmp_path)  # gate's files land here
    assert shown_by(monkeypatch, argv) is True
    assert shown_by(monkeypatch, [*argv, "--no-progress"]) is False


def on_a_terminal(argv: list[str], folder) -> tuple[str, str]:
    """(stdout, what a 120-column terminal on stderr received) of `cifar-spec argv`."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    done = subprocess.run(
        [sys.executable, "-m", "cifar_spec", *argv],
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
        timeout=600,
        cwd=folder,  # not the checkout: workers refuse code from the folder they start in
    )
    os.close(follower)
    screen = b""
    try:
        while chunk := os.read(leader, 65536):
            screen += chunk
    except OSError:  # the terminal's other end is closed: all was read
        pass
    os.close(leader)
    assert done.returncode == 0, screen
    return done.stdout, screen.decode(errors="replace")


@pytest.mark.slow
def test_bench_on_a_terminal_shows_a_bar_of_the_pairs_then_the_table_alone(tmp_path):
    argv = ["bench", "--device", "cpu", "--batch-size", "1", "--variant", "channels_last"]
    out, screen = on_a_terminal([*argv, "--workers", "1", "--threads", "1"], tmp_path)
    # The case and its pairs done of 8. Which counts are drawn depends on time: tqdm redraws
    # at most every 0.1 s, so the last pair (8/8) may come too soon after the one before it
    # to be drawn (seen beside a busy core).
    assert re.search(r"cpu channels_last batch 1: [0-8]/8 pairs", screen), screen
    assert "channels_last" in out and "images/s" not in screen  # the rows once, in the table
    assert screen.endswith("\r")  # cleared: no bar left above the table
    quiet_out, quiet = on_a_terminal(
        [*argv, "--workers", "1", "--threads", "1", "--no-progress"], tmp_path
    )
    assert quiet == "" and "channels_last" in quiet_out


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "not-a-terminal"])
def test_train_draws_its_bar_by_the_same_rule_only_where_stderr_is_a_terminal(
    terminal, tmp_path, monkeypatch, capsys
):
    from cifar_spec.synthetic import write_synthetic_cifar10

    write_synthetic_cifar10(tmp_path, 64, 64)
    screen = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    assert main(["train", "--dry-run", "--data-root", str(tmp_path), "--device", "cpu"]) == 0
    assert ("img/s]" in screen.getvalue()) == terminal  # the bar's rate
    assert "done: 1 epoch" in capsys.readouterr().out

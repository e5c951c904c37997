"""Progress of a long measurement on stderr: one tqdm bar, as `train` draws, that clears.

bench, gate, compare and bench-ddp run for minutes. Their bar names what is being done (the
case, the pair of rounds, the group, the counting process) and tqdm estimates the time left
from the work done so far. It is drawn only where someone watches: on a terminal, and not
under `--no-progress`; a pipe or a CI log gets nothing. It leaves no line behind (tqdm's
`leave=False`), so the table printed after it is the one record of the rows. Lines that must
stay (a skipped case) are written above the bar (`note`).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm


def shown(no_progress: bool, stream: TextIO | None = None) -> bool:
    """Whether to draw a bar: asked for (no `--no-progress`) and stderr is a terminal."""
    stream = stream or sys.stderr
    return not no_progress and stream.isatty()


class Progress:
    """A bar of `total` units of work (growable: compare takes more pairs while a case is
    inconclusive), its description what is being done. Safe to advance from several
    threads (counting processes run side by side). Disabled, every method does nothing
    but `note`."""

    def __init__(
        self, show: bool, total: int | None = None, unit: str = "pair", stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.bar = tqdm(
            total=total,
            unit=unit,
            file=self.stream,
            disable=not show,
            leave=False,
        )

    def doing(self, what: str) -> None:
        with self.lock:
            self.bar.set_description_str(what)

    def advance(self, what: str | None = None, steps: int = 1) -> None:
        """`steps` units done; `what` is being done next, if said."""
        with self.lock:
            if what is not None:
                self.bar.set_description_str(what, refresh=False)
            self.bar.update(steps)

    def expect(self, more: int) -> None:
        """`more` units of work than planned."""
        with self.lock:
            self.bar.total = (self.bar.total or 0) + more
            self.bar.refresh()

    def note(self, line: str, say: Callable[[str], None] | None = None) -> None:
        """A line that stays (a row as it is measured, a skipped case), said by `say` (to
        stderr unless given) whether or not the bar is drawn; the bar cleared while it is."""
        say = say or (lambda text: print(text, file=self.stream, flush=True))
        with self.lock:
            if self.bar.disable:
                say(line)
                return
            with tqdm.external_write_mode(file=self.stream):
                say(line)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hidden() -> Progress:
    """A bar never drawn, for callers that show none (the pytest benchmarks, tests)."""
    return Progress(False)

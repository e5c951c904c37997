"""Every error that cifar_spec raises for a user to read: one base, one class per kind of trouble.

Each message names what is wrong and the way out. The command line prints a
`CifarSpecError` (and a failed read or write that names its file) in one line and
exits with the error's `exit_code`, 2 unless the class says otherwise; anything else that
escapes is a bug in cifar_spec, and stays a traceback, so that it is never dressed as the
user's mistake. Each class also keeps the built-in base a library caller would catch (a
setting that cannot be is a ValueError, and so on).
"""

from __future__ import annotations

# The exit codes these errors end a command with (README.md's table holds every command's;
# 1 and 3 are the verdicts of compare and gate, bench/records.py).
MISTAKE = 2  # a user's mistake, as argparse's own errors exit
NON_FINITE = 4  # a training run stopped by a NaN or infinite loss
INTERRUPTED = 130  # Ctrl-C: the shell's code for a command ended by SIGINT (128 + 2)


class CifarSpecError(Exception):
    """A problem the user can fix; its message says how."""

    exit_code = MISTAKE


class ConfigError(CifarSpecError, ValueError):
    """A setting, flag or combination of them that cannot run; the message names it."""


class DataError(CifarSpecError, RuntimeError):
    """The data set is missing or unreadable; the message names the path and the fix."""


class UnsafeFile(CifarSpecError, RuntimeError):
    """A file is not what the project may read or write; the message names it."""


class FolderBusy(CifarSpecError, RuntimeError):
    """Another process holds the folder's lock; the message names its pid."""


class CheckpointError(CifarSpecError, RuntimeError):
    """A checkpoint or its run folder cannot be used; the message names the file and the fix."""


class NonFiniteLoss(CifarSpecError, RuntimeError):
    """The loss became NaN or infinite: caught before its backward where the step reads
    the loss (the CPU), else at the end of the epoch; never saved in a checkpoint.

    Not the user's mistake as the others are (every setting was valid; the run diverged),
    so a command it ends has its own exit code."""

    exit_code = NON_FINITE


class NotEnoughMemory(CifarSpecError, MemoryError):
    """A run whose data and one step would not fit in the device's free memory."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was saved and how to resume.

    A KeyboardInterrupt, not a CifarSpecError: no `except Exception` may swallow it.
    """

    exit_code = INTERRUPTED


class DistributedError(ConfigError):
    """The environment or settings cannot make a process group; the message says what to set."""


class PeerLost(CifarSpecError, RuntimeError):
    """Another rank died or stalled mid-run; this one stopped instead of waiting for ever."""


class StoppedElsewhere(CifarSpecError, RuntimeError):
    """Another rank refused the run before it began (it says why); this one stopped with it."""


class WorkerError(CifarSpecError, RuntimeError):
    """A worker crashed, hung or refused a request; the message says which and why."""


class WrongImports(CifarSpecError, RuntimeError):
    """A worker imported another torch or cifar_spec than the one to be judged; the message
    names both."""


class BadRound(CifarSpecError, RuntimeError):
    """A benchmark round computed a non-finite loss, or another loss sum than its case's first
    round: its time would be of other work. The message names the case."""


class BadEnvironment(ConfigError):
    """A Python that cannot run the workers; the message says which and how to fix it."""


class CountError(ConfigError):
    """Counting cannot run here; the message says why and how to fix it."""


class GateError(ConfigError):
    """A baseline or floors file that cannot be used; the message names the file and the fix."""

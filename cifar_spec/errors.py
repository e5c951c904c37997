"""Every error that cifar_spec raises for a user to read: one class per kind of trouble.

Each message names what is wrong and the way out. The command line prints such an
error in one line and exits 2; anything else that escapes is a bug, and stays a
traceback.
"""

from __future__ import annotations


class DataError(RuntimeError):
    """The data set is missing or unreadable; the message names the path and the fix."""


class UnsafeFile(RuntimeError):
    """A file is not what the project may read or write; the message names it."""


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; the message names its pid."""


class CheckpointError(RuntimeError):
    """A checkpoint or its run folder cannot be used; the message names the file and the fix."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: caught before its backward where the step reads
    the loss (the CPU), else at the end of the epoch; never saved in a checkpoint."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was saved and how to resume."""


class DistributedError(ValueError):
    """The environment or settings cannot make a process group; the message says what to set."""


class PeerLost(RuntimeError):
    """Another rank died or stalled mid-run; this one stopped instead of waiting for ever."""


class StoppedElsewhere(RuntimeError):
    """Another rank refused the run before it began (it says why); this one stopped with it."""


class WorkerError(RuntimeError):
    """A worker crashed, hung or refused a request; the message says which and why."""


class BadEnvironment(ValueError):
    """A Python that cannot run the workers; the message says which and how to fix it."""


class CountError(ValueError):
    """Counting cannot run here; the message says why and how to fix it."""


class GateError(ValueError):
    """A baseline or floors file that cannot be used; the message names the file and the fix."""

"""How the project writes a file, locks a folder, and reads a file it did not make.

Every file the project writes goes through ``write_atomically``: a fresh name
beside the target, created exclusively (so a link planted there is never
followed), fsynced, then renamed over the target (which replaces a link at the
target instead of writing through it). A crash leaves the old file or the new
one, never half of one.

``folder_lock`` holds an exclusive ``flock`` on a folder while a run writes
into it; a second writer is refused, named by the holder's pid.

Every file the project did not just write is read by ``read_untrusted``: a
regular file only, to a size limit, never a FIFO or device that would block or
flood the reader; JSON through ``parse_json``. Pickles are ``safe_pickle``'s.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cifar_spec.errors import FolderBusy, UnsafeFile

# Open flags for a file of ours: never through a link, never inherited by a child.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
LOCK_FILE = ".cifar-spec.lock"
PROBE_PREFIX = ".probe."
PROBE_BYTES = 1 << 16  # what `check_writable` writes: a disk without room for it is full


def open_folder(folder: Path) -> int:
    """A descriptor of `folder` itself: a folder swapped for a link mid-write is not followed."""
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


# The names a user types for a descriptor of the process itself.
DESCRIPTOR = re.compile(r"/dev/(stdout|stderr|fd/(\d+))|/proc/self/fd/(\d+)")


def descriptor_of(path: Path) -> int | None:
    """N if `path` is, as given, a name of this process's descriptor N (/dev/stdout,
    /dev/stderr, /dev/fd/N, /proc/self/fd/N); None otherwise.

    Only the name as given counts, never where a link leads: a link planted at an
    output (to /proc/self/fd/N, say) is replaced like any other, not written through.
    """
    found = DESCRIPTOR.fullmatch(os.path.abspath(path))  # ../../dev/stdout too; no link followed
    if not found:
        return None
    return {"stdout": 1, "stderr": 2}.get(found[1]) or int(found[2] or found[3])


def names_stdout(path: str | Path | None) -> bool:
    """Whether an output path is this process's standard output (`--json /dev/stdout`)."""
    return path is not None and descriptor_of(Path(path)) == 1


def target_problem(path: Path) -> str | None:
    """Why `path` cannot be written (replaced whole), or None. A link there is replaced, never
    followed; anything else that is not a regular file is refused: renaming over a device or
    FIFO would replace it, writing through one planted by someone else could do worse."""
    folder = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not folder.is_dir():
        return f"cannot write {path}: {folder} is not a folder; pick another path"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    return (
        f"cannot write {path}: it is {kind_of(mode)}, and cifar-spec writes regular files only "
        "(or its own standard output, /dev/stdout); give a file path"
    )


def prepare_output(path: str | Path) -> None:
    """Before any work: `path` can be written, its missing folders made; UnsafeFile if not.

    So that an hour's measurement or training is never lost to a bad path at its end.
    """
    path = Path(path)
    if descriptor_of(path) is not None:
        return
    problem = target_problem(path)
    if problem:
        raise UnsafeFile(problem)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path.parent)
    except OSError as error:
        raise UnsafeFile(cannot_write(str(path), error)) from None


def write_or_stream(path: Path, write: bytes | Callable[[BinaryIO], object]) -> Path:
    descriptor = descriptor_of(path)
    if descriptor is not None:
        for stream in (sys.stdout, sys.stderr):  # what we printed before comes before
            stream.flush()
        with os.fdopen(os.dup(descriptor), "wb") as f:
            f.write(write) if isinstance(write, bytes) else write(f)
        return path
    problem = target_problem(path)
    if problem:
        raise UnsafeFile(problem)
    folder = open_folder(path.parent)
    try:
        # A random name no one can plant a link at in advance; O_EXCL refuses one anyway.
        tmp = f".{path.name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, NEW_FILE, 0o644, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(write) if isinstance(write, bytes) else write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            os.fsync(folder)  # the rename itself survives a crash
        except BaseException:
            with contextlib.suppress(FileNotFoundError):  # gone if the rename was done
                os.unlink(tmp, dir_fd=folder)
            raise
    finally:
        os.close(folder)
    return path


def write_atomically(path: str | Path, write: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write `write` (bytes, or a function given the open file) to `path`, atomically; to our
    own descriptor as a stream where `path` is one (`--json /dev/stdout`). A failed write
    (a full disk) names `path`, so that whoever reports it can say which file."""
    path = Path(path)
    try:
        return write_or_stream(path, write)
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


# What to do about a write that failed, by its cause; one wording for every writer.
WRITE_FIXES = {
    errno.ENOSPC: "free some space or choose a folder on another disk",
    errno.EDQUOT: "free some space or choose a folder on another disk",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
}


def cannot_write(what: str, error: OSError) -> str:
    """One line for a write that failed: what, why, and the way out."""
    fix = WRITE_FIXES.get(error.errno, "check the path and choose another if need be")
    return f"cannot write {what} ({error.strerror or error}); {fix}"


def check_writable(folder: str | Path) -> None:
    """Raise OSError unless a new file can be made in `folder`; the probe is removed again.

    Trying is the only true test: permissions say nothing of a read-only file
    system, or of root, who ignores them.
    """
    fd = open_folder(Path(folder))
    try:
        probe = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
        file = os.open(probe, NEW_FILE, 0o644, dir_fd=fd)
        try:
            # Some bytes too: an empty file costs no space, so only a write finds a full disk.
            os.write(file, bytes(PROBE_BYTES))
            os.fsync(file)
        finally:
            os.close(file)
            os.unlink(probe, dir_fd=fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, data: object) -> Path:
    """`data` as indented JSON, written whole or not at all (`write_atomically`)."""
    return write_atomically(path, json.dumps(data, indent=1).encode())


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_atomically(path, text.encode())


# What a path can be other than a regular file, as a refusal names it.
KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
MAX_DEPTH = 32  # nesting of a JSON file we read; ours nest 5 deep at most


def kind_of(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def read_untrusted(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes; UnsafeFile if not.

    Anything else at the path is refused unread: a FIFO would block the reader for
    ever, a link to /dev/zero would fill the memory. It is checked before it is
    opened (opening a device can have effects of its own), opened without blocking,
    and checked again by its descriptor, so a file swapped in between is not read.
    OSError (a missing file, a folder we cannot read) is the caller's to word.
    """
    path = Path(path)
    refuse(path, os.stat(path), limit, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        refuse(path, os.fstat(fd), limit, what)
        raw = f.read(limit + 1)
    if len(raw) > limit:  # it grew since
        refuse_size(path, len(raw), limit, what)
    return raw


def refuse(path: Path, st: os.stat_result, limit: int, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(
            f"{path} is {kind_of(st.st_mode)}, not a regular file; it cannot be {what}: "
            "remove it or give another path (it was not read)"
        )
    if st.st_size > limit:
        refuse_size(path, st.st_size, limit, what)


def refuse_size(path: Path, size: int, limit: int, what: str) -> None:
    raise UnsafeFile(
        f"{path} holds {size:,} bytes or more, more than {what} ever needs ({limit:,}); "
        "it is not one: remove it or give another path (it was not read)"
    )


def json_depth(text: str) -> int:
    """How deep `text`'s arrays and objects nest, strings aside; one pass, no recursion.

    A string token may lack its closing quote (`"?`): the scan then ends there instead
    of trying again from every later quote, which took seconds on 80 kB of `\\"`.
    """
    depth = deepest = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in ("]", "}"):
            depth -= 1
    return deepest


def parse_json(raw: bytes, path: str | Path, what: str) -> object:
    """`raw`, the bytes of `path`, as JSON; ValueError naming the file for anything that is
    not UTF-8 JSON of at most MAX_DEPTH levels, or that holds NaN or Infinity (which Python
    would read, and every comparison with them would then be false)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {error.start}); it is not {what}"
        ) from None
    if json_depth(text) > MAX_DEPTH:
        raise ValueError(f"{path} nests deeper than {MAX_DEPTH} levels; it is not {what}")

    def constant(name: str) -> None:
        raise ValueError(f"{path}: {name} is not a number; {what} holds finite values only")

    try:
        return json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}); it is not {what}"
        ) from None


def holder_pid(fd: int) -> str:
    """The pid the lock file open at `fd` names: its holder's, written as it took the lock."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def in_use(folder: Path, what: str, holder: str) -> FolderBusy:
    return FolderBusy(
        f"cannot write {what} in {folder}: it is in use by another cifar-spec process "
        f"(pid {holder}); wait for it to end, or choose another folder"
    )


def check_not_in_use(folder: str | Path, what: str) -> None:
    """Refuse `folder` if another process holds its lock now (FolderBusy names its pid); take
    nothing. For a check before any work, where what is in the folder would otherwise be
    judged while another run is still writing it.

    The probe holds a shared lock for an instant: a third process taking the lock in that
    instant is refused as busy, and says so, rather than writing beside another.
    """
    path = Path(folder) / LOCK_FILE
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return  # a link or device planted there: `folder_lock` refuses it, unopened here
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # no lock file: no one has locked the folder
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise in_use(Path(folder), what, holder_pid(fd)) from None
    finally:
        os.close(fd)  # closing releases the probe's own lock


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (created if missing) until the block ends.

    The lock file keeps the holder's pid for the refusal's message. It stays
    in place afterwards: deleting it would let a third process lock a new
    file while a second still waits on the old one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(
            folder / LOCK_FILE,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            0o644,
        )
    except OSError as error:  # ELOOP: a link planted where the lock file goes
        raise UnsafeFile(
            f"cannot lock {folder / LOCK_FILE} ({error.strerror}); remove it"
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # a FIFO or device planted there: never written to
            raise UnsafeFile(
                f"cannot lock {folder / LOCK_FILE}: it is {kind_of(mode)}, not a regular "
                "file; remove it"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise in_use(folder, what, holder_pid(fd)) from None
        # Written in place, not renamed: the lock belongs to this file's inode.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock, on every exit

"""Writing and locking: atomic, never through a planted link, one writer per folder."""

import os
import subprocess
import sys

import pytest

from cifar_spec import files
from cifar_spec.files import FolderBusy, folder_lock, write_atomically


@pytest.fixture
def victim(tmp_path):
    """A file an attacker wants overwritten, outside the folder being written."""
    path = tmp_path / "victim"
    path.write_bytes(b"precious")
    return path


def test_a_link_planted_at_the_target_is_replaced_and_its_target_is_unchanged(tmp_path, victim):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "history.json").symlink_to(victim)
    write_atomically(tmp_path / "out" / "history.json", b"{}")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "out" / "history.json").is_symlink()
    assert (tmp_path / "out" / "history.json").read_bytes() == b"{}"


def test_a_link_planted_at_the_temporary_name_is_refused_and_its_target_is_unchanged(
    tmp_path, victim, monkeypatch
):
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "guessed")  # the attacker's best case
    (tmp_path / ".loss.png.guessed.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomically(tmp_path / "loss.png", b"png")
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / ".loss.png.guessed.tmp").is_symlink()  # not ours: left alone
    assert not (tmp_path / "loss.png").exists()


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomically(tmp_path / "checkpoint.pt", fail)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"old"


HOLDER = """
import sys, time
from cifar_spec.files import folder_lock
with folder_lock(sys.argv[1], "a test"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_folder_locked_by_another_process_is_refused_naming_its_pid_until_it_ends(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(
            FolderBusy,
            match=f"cannot write another in .*: it is in use by .* process \\(pid {holder.pid}\\)",
        ):
            with folder_lock(tmp_path, "another"):
                pass
    finally:
        holder.communicate("")  # closing its stdin ends it, and its lock with it
    with folder_lock(tmp_path, "another"):
        assert (tmp_path / ".cifar-spec.lock").read_text() == f"{os.getpid()}\n"


def test_a_link_planted_at_the_lock_file_is_refused(tmp_path, victim):
    (tmp_path / ".cifar-spec.lock").symlink_to(victim)
    with pytest.raises(files.UnsafeFile, match="cannot lock"):
        with folder_lock(tmp_path, "a test"):
            pass
    assert victim.read_bytes() == b"precious"

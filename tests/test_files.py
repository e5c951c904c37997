"""Writing and locking: atomic, never through a planted link, one writer per folder."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_spec import files
from cifar_spec.cli import main
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


@contextlib.contextmanager
def held(folder):
    """Another process holding `folder`'s lock until the block ends."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.communicate("")  # closing its stdin ends it, and its lock with it


def test_a_folder_locked_by_another_process_is_refused_naming_its_pid_until_it_ends(tmp_path):
    with held(tmp_path) as holder:
        with pytest.raises(
            FolderBusy,
            match=f"cannot write another in .*: it is in use by .* process \\(pid {holder.pid}\\)",
        ):
            with folder_lock(tmp_path, "another"):
                pass
    with folder_lock(tmp_path, "another"):
        assert (tmp_path / ".cifar-spec.lock").read_text() == f"{os.getpid()}\n"


def test_a_folder_in_use_is_named_by_a_look_that_takes_no_lock(tmp_path):
    files.check_not_in_use(tmp_path, "a look")  # never locked: no lock file at all
    with held(tmp_path) as holder:
        with pytest.raises(FolderBusy, match=f"in use by .* process \\(pid {holder.pid}\\)"):
            files.check_not_in_use(tmp_path, "a look")
    files.check_not_in_use(tmp_path, "a look")  # its holder ended: free again
    with folder_lock(tmp_path, "a run after the look"):  # and the look kept no lock
        pass


def test_a_link_planted_at_the_lock_file_is_refused(tmp_path, victim):
    (tmp_path / ".cifar-spec.lock").symlink_to(victim)
    with pytest.raises(files.UnsafeFile, match="cannot lock"):
        with folder_lock(tmp_path, "a test"):
            pass
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("kind", ["fifo", "character device", "socket"])
def test_the_writer_refuses_a_special_file_at_the_target_and_leaves_it_in_place(
    tmp_path, kind, plant
):
    target = tmp_path / "latest.json"
    plant(target, kind)
    mode = os.lstat(target).st_mode
    said = f"it is {'a FIFO' if kind == 'fifo' else 'a ' + kind}"
    with pytest.raises(files.UnsafeFile, match=f"{said}, and cifar-spec writes regular files only"):
        write_atomically(target, b"{}")
    with pytest.raises(files.UnsafeFile, match=said):
        files.prepare_output(target)
    assert os.lstat(target).st_mode == mode  # not replaced, not written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json"]


WRITE_TO_STDOUT = """
import sys
from cifar_spec.files import write_atomically
print("table", flush=True)
write_atomically("/dev/stdout", b'{"rows": []}\\n')
"""


def test_the_writer_writes_through_its_own_standard_output_as_a_stream(tmp_path):
    # What `--json /dev/stdout` does: into a pipe, and into a file the shell opened for it.
    piped = subprocess.run([sys.executable, "-c", WRITE_TO_STDOUT], capture_output=True)
    assert piped.returncode == 0 and piped.stdout == b'table\n{"rows": []}\n'
    with open(tmp_path / "out", "wb") as out:
        subprocess.run([sys.executable, "-c", WRITE_TO_STDOUT], stdout=out, check=True)
    assert (tmp_path / "out").read_bytes() == b'table\n{"rows": []}\n'
    assert os.path.islink("/dev/stdout")  # the link itself was never replaced


@pytest.mark.parametrize("kind", ["fifo", "character device"])
def test_bench_refuses_a_special_file_at_its_json_path_before_measuring(
    no_workers, tmp_path, capsys, kind, plant
):
    target = tmp_path / "latest.json"
    plant(target, kind)
    assert main(["bench", "--device", "cpu", "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"it is a {'FIFO' if kind == 'fifo' else kind}" in err


@pytest.fixture
def small_disk(tmp_path):
    """mount(size, read_only) -> a folder on a real tmpfs of `size`; skipped where mount is not
    allowed (not root, or a container without the capability)."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)])
        if done.returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)])


def test_a_full_disk_ends_training_in_one_line_and_the_last_checkpoint_stays_whole(
    small_disk, synthetic_root, capsys
):
    out = small_disk("4m") / "run"
    argv = ["train", "--data-root", str(synthetic_root), "--limit", "8", "--no-progress"]
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 0
    saved = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    with open(out.parent / "filler", "wb") as f:  # the rest of the disk, taken by another
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
    assert main([*argv, "--epochs", "3", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert (out / "checkpoint.pt").read_bytes() == saved
    assert not list(out.glob(".*.tmp"))


def test_a_read_only_or_full_disk_is_refused_in_one_line_before_any_work(
    small_disk, synthetic_root, capsys
):
    read_only, full = small_disk("1m", read_only=True), small_disk("16k")
    (full / "filler").write_bytes(b"\0" * 16384)  # tmpfs counts pages: this fills it
    for folder, said in ((read_only, "Read-only file system"), (full, "No space left")):
        for argv in (
            ["data", "synth", "--root", str(folder / "data"), "--n-train", "5", "--n-test", "5"],
            ["train", "--data-root", str(synthetic_root), "--out", str(folder / "run")],
            ["bench", "--device", "cpu", "--json", str(folder / "b" / "latest.json")],
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and said in err, (argv, err)


def test_a_link_planted_at_an_output_to_one_of_our_descriptors_is_replaced_not_written_through(
    tmp_path,
):
    # Only a descriptor's own name, as the user types it, is a stream; a link that leads
    # to one (to our stderr, or a lock file we hold open) is a link like any other.
    (tmp_path / "latest.json").symlink_to("/proc/self/fd/2")
    write_atomically(tmp_path / "latest.json", b"{}")
    assert not (tmp_path / "latest.json").is_symlink()
    assert (tmp_path / "latest.json").read_bytes() == b"{}"

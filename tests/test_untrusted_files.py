"""Every file the project reads may be hostile: only a regular file of a sane size is read.

A FIFO would block the reader for ever, a link to /dev/zero would read until the
memory runs out, a file nested 100,000 lists deep would overflow the parser's
stack. Each is refused in one line before it is read, by the one reader every
file goes through (`files.read_untrusted`), whichever command meets it.
"""

import re
import shutil
import signal
from pathlib import Path

import pytest

from cifar_spec import files
from cifar_spec.cli import main
from cifar_spec.files import UnsafeFile, parse_json, read_untrusted


@pytest.fixture(autouse=True)
def no_hang():
    """A read that blocks (on a FIFO, say) fails the test after 10 s instead of hanging it."""

    def hung(*_):
        raise TimeoutError("the command blocked for 10 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


KINDS = ["fifo", "link to /dev/zero", "character device", "socket", "folder", "huge file"]
SAID = {
    "fifo": "is a FIFO, not a regular file",
    "link to /dev/zero": "is a character device, not a regular file",
    "character device": "is a character device, not a regular file",
    "socket": "is a socket, not a regular file",
    "folder": "is a folder, not a regular file",
    "huge file": "bytes or more, more than",
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_reader_refuses_anything_but_a_regular_file_of_a_sane_size_unread(
    tmp_path, kind, plant
):
    path = tmp_path / "file"
    plant(path, kind)
    with pytest.raises(UnsafeFile, match=SAID[kind]):
        read_untrusted(path, 1 << 20, "a test file")


def test_the_reader_reads_a_regular_file_and_one_behind_a_link(tmp_path):
    (tmp_path / "real").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_untrusted(tmp_path / "real", 3, "x") == read_untrusted(tmp_path / "link", 3, "x")


def test_json_nested_deeper_than_any_of_ours_is_refused_without_recursion(tmp_path):
    with pytest.raises(ValueError, match="nests deeper than 32 levels"):
        parse_json(b"[" * 100_000 + b"]" * 100_000, tmp_path / "deep.json", "a baseline")
    with pytest.raises(ValueError, match="is not UTF-8"):
        parse_json(b'{"a": "\xff"}', tmp_path / "latin.json", "a baseline")
    assert parse_json(b'{"a": ["[[[[", {"b": 1}]}', tmp_path / "ok.json", "x") == {
        "a": ["[[[[", {"b": 1}]
    }


@pytest.fixture
def data_root(tmp_path, synthetic_root):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


def train(root, out, *extra):
    return main(
        ["train", "--data-root", str(root), "--epochs", "1", "--limit", "8", "--no-progress"]
        + ["--out", str(out), *extra]
    )


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "huge file"])
@pytest.mark.parametrize("name", ["test_batch", "batches.meta", "synthetic.json"])
def test_training_refuses_a_planted_data_file_in_one_line_before_any_work(
    data_root, tmp_path, capsys, name, kind, plant
):
    plant(data_root / "cifar-10-batches-py" / name, kind)
    assert train(data_root, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and SAID[kind] in err and name in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "huge file"])
def test_resuming_refuses_a_planted_checkpoint_in_one_line(
    data_root, tmp_path, capsys, kind, plant
):
    out = tmp_path / "run"
    out.mkdir()
    plant(out / "checkpoint.pt", kind)
    assert train(data_root, out, "--resume") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and SAID[kind] in err and "checkpoint.pt" in err


@pytest.mark.parametrize("kind", ["fifo", "character device"])
def test_a_lock_file_that_is_not_a_regular_file_is_refused_and_never_written(tmp_path, kind, plant):
    plant(tmp_path / files.LOCK_FILE, kind)
    with pytest.raises(UnsafeFile, match="not a regular file; remove it"):
        with files.folder_lock(tmp_path, "a test"):
            pass


def baseline_path(tmp_path, capsys):
    """Where the gate looks for this machine's baseline under `tmp_path`, as it says."""
    assert main(["gate", "--device", "cpu", "--storage", str(tmp_path)]) != 0
    [path] = re.findall(r"at (\S+baseline\.json)", capsys.readouterr().err)
    return Path(path)


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "huge file"])
def test_the_gate_refuses_a_planted_baseline_in_one_line_before_timing(
    tmp_path, capsys, kind, plant
):
    path = baseline_path(tmp_path, capsys)
    path.parent.mkdir(parents=True)
    plant(path, kind)
    assert main(["gate", "--device", "cpu", "--storage", str(tmp_path)]) in (2, 3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and SAID[kind] in err and "baseline.json" in err


def test_a_baseline_nested_100000_deep_is_refused_in_one_line(tmp_path, capsys):
    path = baseline_path(tmp_path, capsys)
    path.parent.mkdir(parents=True)
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert main(["gate", "--device", "cpu", "--storage", str(tmp_path)]) in (2, 3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nests deeper than 32 levels" in err


@pytest.mark.parametrize("name", ["history.json", "loss.png"])
def test_resuming_refuses_a_fifo_where_a_run_file_goes_before_training(
    data_root, tmp_path, capsys, name, plant
):
    out = tmp_path / "run"
    assert train(data_root, out) == 0
    saved = (out / "checkpoint.pt").read_bytes()
    plant(out / name, "fifo")
    capsys.readouterr()
    assert train(data_root, out, "--resume", "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{name}: it is a FIFO" in err
    assert (out / "checkpoint.pt").read_bytes() == saved

"""CIFAR-10 on disk: every file checked by the safe reader, then parsed by torchvision's own."""

import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10
from torchvision.transforms import ToTensor

from cifar_spec.cifar10 import CheckedCIFAR10, load_cifar10
from cifar_spec.cifar10_format import CLASSES
from cifar_spec.data import DeviceData, to_device
from cifar_spec.errors import DataError
from cifar_spec.files import UnsafeFile
from cifar_spec.synthetic import synthetic_settings, write_synthetic_cifar10


@pytest.fixture
def root(synthetic_root):
    return synthetic_root


def test_the_synthetic_set_has_cifar10s_files_and_pickle_format(root):
    folder = root / "cifar-10-batches-py"
    names = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
    assert names <= {p.name for p in folder.iterdir()}
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert set(entry) == {"batch_label", "labels", "data", "filenames"}
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (60, 3072)
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"] == CLASSES


@pytest.mark.parametrize("train, size", [(True, 300), (False, 300)], ids=["train", "test"])
def test_the_synthetic_set_loads_through_torchvisions_cifar10_parser(root, train, size):
    dataset = load_cifar10(root, train=train)
    assert isinstance(dataset, CIFAR10) and isinstance(dataset, CheckedCIFAR10)
    assert dataset.data.shape == (size, 32, 32, 3) and dataset.data.dtype == np.uint8
    assert len(dataset.targets) == size and set(dataset.targets) <= set(range(10))
    assert dataset.classes == CLASSES
    image, label = dataset[0]
    assert image.size == (32, 32) and image.mode == "RGB" and 0 <= label < 10


def test_the_checked_subclass_changes_only_the_checksums_torchvision_holds_the_files_to(root):
    assert {k for k in vars(CheckedCIFAR10) if not k.startswith("_")} == set()
    dataset = load_cifar10(root, train=False)
    assert set(vars(dataset)) >= {"train_list", "test_list", "meta"}
    assert [name for name, _ in dataset.train_list] == [name for name, _ in CIFAR10.train_list]
    assert dataset.meta["filename"] == CIFAR10.meta["filename"]
    assert all(len(md5) == 32 for _, md5 in dataset.train_list + dataset.test_list)


def test_cifar10s_file_names_and_published_md5s_are_torchvisions():
    from cifar_spec import cifar10_format as data

    assert data.BASE_FOLDER == CIFAR10.base_folder
    assert data.TRAIN_FILES == [name for name, _ in CIFAR10.train_list]
    assert [data.TEST_FILE] == [name for name, _ in CIFAR10.test_list]
    published = dict(CIFAR10.train_list + CIFAR10.test_list)
    assert data.PUBLISHED_MD5 == {**published, CIFAR10.meta["filename"]: CIFAR10.meta["md5"]}


def test_the_cli_imports_torchvision_only_when_it_reads_data():
    # torchvision takes seconds to import (it pulls in torch._dynamo): a timing worker, a
    # torchrun rank starting up or `--help` must not pay for it.
    code = "import sys, cifar_spec.cli; print('torchvision' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_the_safe_reader_gives_what_torchvisions_own_unchecked_parser_gives(
    root, torchvisions_own_reader
):
    ours, theirs = load_cifar10(root, train=True), torchvisions_own_reader(root, train=True)
    assert np.array_equal(ours.data, theirs.data) and ours.targets == theirs.targets
    assert ours.classes == theirs.classes


def test_the_same_seed_writes_the_same_bytes(tmp_path):
    a, b, c = (
        write_synthetic_cifar10(tmp_path / n, 10, 5, seed=s)
        for n, s in [("a", 1), ("b", 1), ("c", 2)]
    )
    assert (a / "test_batch").read_bytes() == (b / "test_batch").read_bytes()
    assert (a / "test_batch").read_bytes() != (c / "test_batch").read_bytes()


def test_the_device_split_equals_totensor_bit_for_bit(root):
    dataset = load_cifar10(root, train=False)
    data = to_device(dataset)
    expected = torch.stack([ToTensor()(dataset[i][0]) for i in range(len(dataset))])
    assert torch.equal(data.images, expected)
    assert torch.equal(data.labels, torch.tensor(dataset.targets))


def test_shuffled_batches_cover_every_image_once_in_a_seeded_order(root):
    data = to_device(load_cifar10(root, train=False))
    seen = [labels for _, labels in data.batches(6, torch.Generator().manual_seed(0))]
    again = [labels for _, labels in data.batches(6, torch.Generator().manual_seed(0))]
    assert [len(b) for b in seen] == [6] * 50
    assert all(torch.equal(a, b) for a, b in zip(seen, again))
    assert sorted(torch.cat(seen).tolist()) == sorted(data.labels.tolist())
    assert not torch.equal(torch.cat(seen), data.labels)


def test_unshuffled_batches_keep_the_file_order(root):
    data = to_device(load_cifar10(root, train=False))
    assert torch.equal(torch.cat([y for _, y in data.batches(7)]), data.labels)
    assert isinstance(data, DeviceData) and len(data.head(3)) == 3


def test_a_missing_data_set_names_the_path_and_both_ways_out(tmp_path):
    with pytest.raises(DataError, match=r"--download.*--synthetic") as info:
        load_cifar10(tmp_path / "nothing", train=False)
    assert str(tmp_path / "nothing") in str(info.value)


def broken_copy(tmp_path, root, damage):
    copy = tmp_path / "broken"
    shutil.copytree(root, copy)
    damage(copy / "cifar-10-batches-py")
    return copy


def truncate(folder):
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[: len(data) // 2])


def wrong_format(folder):
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}, f)


def bad_labels(folder):
    with open(folder / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry["labels"] = [12] * len(entry["labels"])
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(entry, f)


def relabel(labels):
    def damage(folder):
        with open(folder / "test_batch", "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # our own file: safe to read plainly
        entry["labels"] = labels(len(entry["labels"]))
        with open(folder / "test_batch", "wb") as f:
            pickle.dump(entry, f, protocol=2)

    return damage


DAMAGE = {
    "missing-file": (lambda f: (f / "test_batch").unlink(), "test_batch: No such file"),
    "truncated-file": (truncate, "test_batch is truncated or not in CIFAR-10's format"),
    "wrong-format": (
        wrong_format,
        r"test_batch is not in CIFAR-10's format: 'data' is not a "
        r"uint8 array of shape \(N, 3072\)",
    ),
    "labels-out-of-range": (bad_labels, r"labels from 12 to 12, not in \[0, 10\)"),
    "float-labels": (relabel(lambda n: [1.0] * n), "integer class indices, found float 1.0"),
    "string-labels": (relabel(lambda n: ["cat"] * n), "integer class indices, found str 'cat'"),
    "a-label-short": (relabel(lambda n: [1] * (n - 1)), "299 labels for 300 images"),
}


@pytest.mark.parametrize("damage, message", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_data_set_gives_one_clear_error(tmp_path, root, damage, message):
    copy = broken_copy(tmp_path, root, damage)
    with pytest.raises(DataError, match=message) as info:
        load_cifar10(copy, train=False)
    assert str(copy) in str(info.value)


@pytest.mark.parametrize("damage", [d for d, _ in DAMAGE.values()], ids=DAMAGE.keys())
def test_a_damaged_synthetic_set_names_the_data_synth_command_that_wrote_it(tmp_path, root, damage):
    copy = broken_copy(tmp_path, root, damage)
    with pytest.raises(DataError) as info:
        load_cifar10(copy, train=False)
    command = f"`cifar-spec data synth --root {copy} --n-train 300 --n-test 300 --seed 0 --signal"
    assert command in str(info.value) and "--download" not in str(info.value)


def test_real_cifar10_is_never_overwritten_by_the_synthetic_writer(tmp_path, root):
    real = broken_copy(tmp_path, root, lambda f: (f / "synthetic.json").unlink())
    before = (real / "cifar-10-batches-py" / "test_batch").read_bytes()
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_synthetic_cifar10(real, 10, 5)
    assert (real / "cifar-10-batches-py" / "test_batch").read_bytes() == before


def test_a_synthetic_write_cut_short_leaves_a_folder_that_is_still_ours(tmp_path, monkeypatch):
    import cifar_spec.synthetic as data

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(data, "synthetic_images", fail)
    with pytest.raises(OSError):
        write_synthetic_cifar10(tmp_path, 10, 5)
    assert data.synthetic_settings(tmp_path) is None  # not complete: not to be used
    monkeypatch.undo()
    write_synthetic_cifar10(tmp_path, 10, 5, seed=3)  # and may be written again
    assert data.synthetic_settings(tmp_path)["seed"] == 3


class Payload:
    """What an attacker plants: unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def plant(name, wrap=lambda payload: payload):
    def damage(folder):
        payload = wrap(Payload(folder.parent.parent / "marker"))
        (folder / name).write_bytes(pickle.dumps(payload, protocol=2))

    return damage


PLANTED = {
    "test-batch": plant("test_batch"),
    "a-train-batch-read-for-the-test-split": plant("data_batch_3"),
    "batches-meta": plant("batches.meta"),
    "inside-a-valid-batch": plant(
        "test_batch", lambda p: {"data": np.zeros((1, 3072), np.uint8), "labels": [p]}
    ),
}


@pytest.mark.parametrize("damage", PLANTED.values(), ids=PLANTED.keys())
def test_a_planted_pickle_in_a_synthetic_folder_runs_nothing_and_names_the_file(
    tmp_path, root, damage
):
    copy = broken_copy(tmp_path, root, damage)
    name = next(
        p.name for p in (copy / "cifar-10-batches-py").iterdir() if b"system" in p.read_bytes()
    )
    if name == "data_batch_3":  # only its md5 is read for the test split: load the train split
        with pytest.raises(UnsafeFile, match=f"{name} was refused unread: it names posix.system"):
            load_cifar10(copy, train=True)
    else:
        with pytest.raises(UnsafeFile, match=f"{name} was refused unread: it names posix.system"):
            load_cifar10(copy, train=False)
    assert not (tmp_path / "marker").exists()


def test_a_planted_pickle_in_a_real_cifar10_folder_fails_its_md5_before_it_is_read(tmp_path, root):
    def plant_in_real(folder):
        (folder / "synthetic.json").unlink()
        plant("test_batch")(folder)

    copy = broken_copy(tmp_path, root, plant_in_real)
    # The md5s are checked first, file by file: data_batch_1 (ours, not CIFAR-10's) stops it.
    with pytest.raises(DataError, match="data_batch_1 does not match CIFAR-10's published md5"):
        load_cifar10(copy, train=False)
    assert not (tmp_path / "marker").exists()


def test_the_tutorials_own_loader_reads_through_the_same_checks(tmp_path, root):
    from cifar_spec.tutorial import tutorial_setup

    copy = broken_copy(tmp_path, root, plant("test_batch"))
    with pytest.raises(UnsafeFile, match="test_batch was refused unread"):
        tutorial_setup(copy, 10)
    assert not (tmp_path / "marker").exists()


def test_a_synthetic_set_whose_writing_never_finished_is_refused(tmp_path, root):
    copy = broken_copy(
        tmp_path, root, lambda f: (f / "synthetic.json").write_text('{"complete": false}')
    )
    with pytest.raises(DataError, match="never completed.*data synth --root"):
        load_cifar10(copy, train=False)


def test_a_set_an_older_generator_wrote_is_refused_naming_the_fix(tmp_path, root):
    # Its images differ from this generator's for the same seed: trained on, it would
    # give figures that no longer match the docs.
    old = '{"n_train": 300, "n_test": 300, "seed": 0, "complete": true}'
    copy = broken_copy(tmp_path, root, lambda f: (f / "synthetic.json").write_text(old))
    assert synthetic_settings(copy) is None
    with pytest.raises(DataError, match="written by an older cifar_spec.*data synth --root"):
        load_cifar10(copy, train=False)


def test_a_negative_seed_is_refused_before_the_set_is_touched(tmp_path, root):
    copy = broken_copy(tmp_path, root, lambda f: None)
    before = {p.name: p.read_bytes() for p in (copy / "cifar-10-batches-py").iterdir()}
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        write_synthetic_cifar10(copy, 10, 5, seed=-1)
    assert {p.name: p.read_bytes() for p in (copy / "cifar-10-batches-py").iterdir()} == before


def test_a_second_writer_of_one_data_folder_is_refused_naming_the_first(tmp_path):
    import os

    from cifar_spec.files import FolderBusy, folder_lock

    with folder_lock(tmp_path / "cifar-10-batches-py", "a synthetic data set"):
        with pytest.raises(FolderBusy, match=f"pid {os.getpid()}"):
            write_synthetic_cifar10(tmp_path, 10, 5)
    assert not (tmp_path / "cifar-10-batches-py" / "test_batch").exists()


def test_synth_refuses_a_folder_holding_files_it_did_not_write_and_leaves_them(tmp_path, capsys):
    from cifar_spec.cli import main

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"the user's own")  # no batches.meta, no marker
    assert main(["data", "synth", "--root", str(tmp_path), "--n-train", "5", "--n-test", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files (test_batch) that this project did not" in err
    assert [p.name for p in folder.iterdir()] == ["test_batch"]
    assert (folder / "test_batch").read_bytes() == b"the user's own"


def test_synth_never_writes_through_a_linked_data_folder(tmp_path, capsys):
    from cifar_spec.cli import main

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "cifar-10-batches-py").symlink_to(elsewhere)
    argv = ["data", "synth", "--root", str(tmp_path / "root"), "--n-train", "5", "--n-test", "5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a link (to" in err
    assert list(elsewhere.iterdir()) == []


def test_synth_rewrites_a_folder_of_its_own(tmp_path):
    write_synthetic_cifar10(tmp_path, 10, 5, seed=1)
    first = (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()
    write_synthetic_cifar10(tmp_path, 10, 5, seed=2)
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes() != first
    assert synthetic_settings(tmp_path)["seed"] == 2


@pytest.mark.parametrize("n_train, n_test", [(3, 0), (0, 4)])
def test_the_empty_batches_synth_writes_are_read_back(tmp_path, n_train, n_test):
    # Fewer than 5 training images leave some of the 5 batches empty; their pixels
    # are b'', which protocol 2 stores as a call to bytes().
    write_synthetic_cifar10(tmp_path, n_train, n_test)
    assert len(load_cifar10(tmp_path, train=True)) == n_train
    assert len(load_cifar10(tmp_path, train=False)) == n_test


def test_bytes_called_with_arguments_is_still_refused(tmp_path):
    # What an attacker would reach for: bytes(...) building something other than b''.
    planted = pickle.dumps(bytes, protocol=2)[:-1] + b"K\x05\x85R."  # bytes(5)
    from cifar_spec.safe_pickle import load_pickle

    with pytest.raises(UnsafeFile, match="a call to bytes with 1 argument"):
        load_pickle(planted, tmp_path / "test_batch")


@pytest.mark.slow
def test_the_largest_files_synth_writes_are_read_back(tmp_path):
    # 10,000 images a file, as CIFAR-10's; the worst case for the reader's size limit
    # (its pixels take up to two bytes each in protocol 2's latin-1 strings).
    write_synthetic_cifar10(tmp_path, 0, 10_000)
    assert len(load_cifar10(tmp_path, train=False)) == 10_000
    with pytest.raises(ValueError, match="at most 50,000 training and 10,000 test images"):
        write_synthetic_cifar10(tmp_path / "more", 0, 10_001)

"""The run folder: checkpoints resume exactly, nothing earlier is lost, every stop is clean."""

import errno
import json
import os
import re
from dataclasses import asdict, replace

import pytest
import torch

from cifar_spec import checkpoint, files, plot, published
from cifar_spec.checkpoint import RUN_FILES
from cifar_spec.data import DeviceData
from cifar_spec.errors import CheckpointError, FolderBusy, Interrupted, NonFiniteLoss
from cifar_spec.files import folder_lock
from cifar_spec.loop import TrainConfig, fit, published_curve
from cifar_spec.step import default_step


def snapshot(folder):
    """Every file under `folder` and its bytes: what a refused run must leave as it was."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoint_params(path):
    return torch.load(path, weights_only=True)["model"]


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, test_split):
    settings = dict(limit=40, shuffle=True, batch_size=4)
    whole = fit(TrainConfig(epochs=4, out=str(tmp_path / "a"), **settings), test_split, log=None)
    fit(TrainConfig(epochs=2, out=str(tmp_path / "b"), **settings), test_split, log=None)
    resumed = fit(
        TrainConfig(epochs=4, out=str(tmp_path / "b"), **settings),
        test_split,
        resume=True,
        log=None,
    )
    assert resumed == whole
    a, b = (checkpoint_params(tmp_path / n / "checkpoint.pt") for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_mid_run_stops_it_and_leaves_the_last_checkpoint_loadable(tmp_path, test_split):
    config = TrainConfig(epochs=3, limit=20, out=str(tmp_path))
    fit(TrainConfig(epochs=1, limit=20, out=str(tmp_path)), test_split, log=None)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    images = test_split.images.clone()
    images[7] = float("nan")  # a poisoned image, met at step 7 of epoch 2
    poisoned = replace(test_split, images=images)
    retry = f"lr=0.005, out='{tmp_path}-lr0.005'"  # a resume keeps lr=0.01: a new folder
    with pytest.raises(
        NonFiniteLoss,
        match=rf"nan at epoch 2, step 7; the run stopped: {tmp_path} holds epoch 1.*TrainConfig"
        rf".* but {re.escape(retry)}$",
    ):
        fit(config, poisoned, resume=True, log=None)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(not plot.have_matplotlib(), reason="loss.png needs matplotlib")
def test_a_nan_stop_draws_loss_png_for_the_epochs_that_ran(tmp_path, test_split):
    fit(TrainConfig(epochs=1, limit=20, out=str(tmp_path)), test_split, log=None)
    (tmp_path / "loss.png").unlink()  # what the stopped run draws, not the first one
    images = test_split.images.clone()
    images[7] = float("nan")  # met at step 7 of epoch 2
    poisoned = replace(test_split, images=images)
    config = TrainConfig(epochs=3, limit=20, out=str(tmp_path))
    with pytest.raises(NonFiniteLoss, match=f"holds epoch 1, drawn in {tmp_path / 'loss.png'};"):
        fit(config, poisoned, resume=True, log=None)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint at all", None], ids=["empty", "garbage", "truncated"]
)
def test_a_broken_checkpoint_gives_a_clear_error_not_a_pickle_traceback(
    tmp_path, test_split, content
):
    config = TrainConfig(epochs=2, limit=8, out=str(tmp_path))
    if content is None:
        fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
        content = (tmp_path / "checkpoint.pt").read_bytes()[:1000]
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable checkpoint.*start a new run"):
        fit(config, test_split, resume=True, log=None)


def test_a_new_run_never_overwrites_an_existing_checkpoint(tmp_path, test_split):
    fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="holds an earlier run.*--resume"):
        fit(TrainConfig(epochs=2, limit=8, out=str(tmp_path)), test_split, log=None)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved


def test_resuming_with_other_settings_is_refused_and_says_which(tmp_path, test_split):
    fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    with pytest.raises(CheckpointError, match=r"lr=0.01 there, 0.1 here"):
        fit(
            TrainConfig(epochs=2, limit=8, lr=0.1, out=str(tmp_path)),
            test_split,
            resume=True,
            log=None,
        )


def test_the_run_folder_holds_history_and_loss_curve(tmp_path, test_split):
    fit(TrainConfig(epochs=2, limit=8, out=str(tmp_path)), test_split, log=None)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [row["epoch"] for row in history["epochs"]] == [1, 2]
    assert all(row["images_per_s"] > 0 for row in history["epochs"])
    assert history["config"]["limit"] == 8
    assert history["config"]["step"] == asdict(default_step("cpu"))  # the step the run took
    if plot.have_matplotlib():
        assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "change, drawn",
    [({}, True), ({"lr": 0.02}, False), ({"batch_size": 2}, False), ({"shuffle": True}, False)],
)
def test_loss_png_draws_the_published_cifar10_run_beside_a_run_of_the_tutorials_own_settings(
    change, drawn
):
    # 10,000 images (one, repeated: only the count matters here), lr 0.01, batch 1, in order.
    images = torch.zeros(1, 3, 32, 32).expand(published.TUTORIAL_IMAGES, -1, -1, -1)
    data = DeviceData(images, torch.zeros(published.TUTORIAL_IMAGES, dtype=torch.long))
    expected = published.TWENTY_EPOCHS if drawn else None
    assert published_curve(TrainConfig(**change), data) == expected
    assert published_curve(TrainConfig(), data.head(2000)) is None  # a subset turns later


@pytest.mark.skipif(not plot.have_matplotlib(), reason="loss.png needs matplotlib")
def test_the_published_run_is_a_second_line_on_the_chart(tmp_path):
    history = [{"epoch": e, "loss_sum": 18_000.0 - e} for e in (1, 2, 3)]
    plain = plot.loss_curve(history, tmp_path / "plain.png").read_bytes()
    beside = plot.loss_curve(history, tmp_path / "beside.png", published.TWENTY_EPOCHS)
    assert beside.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and beside.read_bytes() != plain


@pytest.mark.skipif(not plot.have_matplotlib(), reason="loss.png needs matplotlib")
@pytest.mark.parametrize("epochs", [1, 2, 3, 20], ids=lambda n: f"{n}-epochs")
def test_loss_png_ticks_whole_epochs_only(epochs):
    from matplotlib import pyplot as plt

    history = [{"epoch": e, "loss_sum": 100.0 / e} for e in range(1, epochs + 1)]
    fig = plot.loss_figure(history)
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    shown = [tick for tick in ax.get_xticks() if low <= tick <= high]
    plt.close(fig)
    assert shown and all(tick == round(tick) for tick in shown), shown
    assert low < 1 and high > epochs  # every epoch's point inside the axis


def test_a_checkpoint_missing_a_part_is_refused_by_name(tmp_path, test_split):
    fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["history"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a cifar-spec checkpoint: it lacks history"):
        fit(TrainConfig(epochs=2, limit=8, out=str(tmp_path)), test_split, resume=True, log=None)


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_new_run_refuses_a_folder_holding_any_earlier_runs_file(tmp_path, test_split, name):
    (tmp_path / name).write_bytes(b"an earlier run's " + name.encode())
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=f"holds an earlier run \\({name}\\).*--resume"):
        fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    assert snapshot(tmp_path) == before


def test_resuming_on_other_data_is_refused_naming_both(tmp_path, synthetic_root, test_split):
    from cifar_spec.cifar10 import load_cifar10
    from cifar_spec.data import to_device

    fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    before = snapshot(tmp_path)
    train_split = to_device(load_cifar10(synthetic_root, train=True))
    with pytest.raises(
        CheckpointError,
        match=r"on other data: it trained on the synthetic test "
        r"split .*8 images.*this run has the synthetic "
        r"train split .*8 images",
    ):
        fit(TrainConfig(epochs=2, limit=8, out=str(tmp_path)), train_split, resume=True, log=None)
    assert snapshot(tmp_path) == before


def rewrite_checkpoint(path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


BAD_PARTS = {
    "another-model": (
        lambda s: s.update(model={"fc.weight": torch.zeros(10, 3072)}),
        "its model is not the tutorial's CifarNet",
    ),
    "a-reshaped-layer": (
        lambda s: s["model"].update({"layers.0.weight": torch.zeros(8, 3, 5, 5)}),
        r"not the tutorial's CifarNet \(layers.0.weight differs\)",
    ),
    "epoch-as-text": (lambda s: s.update(epoch="1"), "its epoch is a str"),
    "history-as-dict": (lambda s: s.update(history={}), "its history is a dict"),
    "epoch-past-history": (lambda s: s.update(epoch=5), "epoch 5 does not match its 1 epochs"),
    "not-a-dict": (None, "it holds a list"),
}


@pytest.mark.parametrize("change, message", BAD_PARTS.values(), ids=BAD_PARTS.keys())
def test_a_checkpoint_with_wrong_parts_is_refused_naming_the_part(
    tmp_path, test_split, change, message
):
    fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    path = tmp_path / "checkpoint.pt"
    if change is None:
        torch.save([1, 2], path)
    else:
        rewrite_checkpoint(path, change)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        fit(TrainConfig(epochs=2, limit=8, out=str(tmp_path)), test_split, resume=True, log=None)
    assert snapshot(tmp_path) == before


def interrupt_at(monkeypatch, epoch):
    """Ctrl-C in the middle of epoch `epoch`: the loop's epoch function raises it."""
    import cifar_spec.loop as loop

    real = loop.train_epoch

    def epoch_or_ctrl_c(step, data, batch_size, number, *args):
        if number == epoch:
            raise KeyboardInterrupt
        return real(step, data, batch_size, number, *args)

    monkeypatch.setattr(loop, "train_epoch", epoch_or_ctrl_c)


def test_ctrl_c_keeps_the_last_complete_epochs_checkpoint_and_says_how_to_resume(
    tmp_path, test_split, monkeypatch
):
    fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    interrupt_at(monkeypatch, 2)
    with pytest.raises(
        Interrupted,
        match=r"interrupted in epoch 2; .*checkpoint.pt holds epoch 1: "
        r"continue with fit\(\.\.\., resume=True\) and the same TrainConfig",
    ):
        fit(TrainConfig(epochs=3, limit=8, out=str(tmp_path)), test_split, resume=True, log=None)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    assert not list(tmp_path.glob("*.tmp"))


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_says_so(
    tmp_path, test_split, monkeypatch
):
    fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    before = snapshot(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    # The disk fills after the run's first check (which writes and syncs a probe) passed.
    monkeypatch.setattr(checkpoint, "check_writable", lambda folder: None)
    with pytest.raises(
        CheckpointError,
        match=r"could not save epoch 2 in .* \(No space left on "
        r"device\); .*checkpoint.pt holds epoch 1",
    ):
        fit(TrainConfig(epochs=2, limit=8, out=str(tmp_path)), test_split, resume=True, log=None)
    assert snapshot(tmp_path) == before  # no half file, no temporary left behind


def test_resuming_without_a_run_folder_is_refused_naming_the_setting_before_any_work(
    test_split, monkeypatch
):
    import cifar_spec.loop as loop

    monkeypatch.setattr(loop, "train", lambda *args: pytest.fail("the run began"))
    with pytest.raises(
        CheckpointError, match=r"^resuming needs the run folder: set TrainConfig.out$"
    ):
        fit(TrainConfig(limit=8), test_split, resume=True, log=None)


def test_resuming_from_a_folder_that_does_not_exist_is_refused_and_makes_no_folder(
    tmp_path, test_split
):
    out = tmp_path / "runs" / "mistyped"
    with pytest.raises(CheckpointError, match=r"^no checkpoint at .*checkpoint\.pt to resume;"):
        fit(TrainConfig(limit=8, out=str(out)), test_split, resume=True, log=None)
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_in_use_is_refused_naming_the_holders_pid(tmp_path, test_split):
    with folder_lock(tmp_path, "a training run"):
        with pytest.raises(
            FolderBusy, match=f"in use by another cifar-spec process \\(pid {os.getpid()}\\)"
        ):
            fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)
    assert not (tmp_path / "checkpoint.pt").exists()
    fit(TrainConfig(epochs=1, limit=8, out=str(tmp_path)), test_split, log=None)  # released
    assert (tmp_path / "checkpoint.pt").exists()

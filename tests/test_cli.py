"""The cifar-spec command, end to end, as a user types it."""

import errno
import json
import os
import pickle
import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cifar_spec import plot
from cifar_spec.cifar10 import load_cifar10
from cifar_spec.cli import build_parser, main
from cifar_spec.cli.train import train_config
from cifar_spec.errors import NonFiniteLoss
from cifar_spec.loop import TrainConfig
from cifar_spec.synthetic import write_synthetic_cifar10


def test_summary_prints_the_tutorials_two_losses_and_the_parameter_count(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "0.6667" in out and "1.3333" in out and "145,578" in out


def test_train_dry_run_falls_back_to_the_synthetic_set_and_says_so(tmp_path, capsys):
    # A small stand-in where the fallback looks, so the test need not write the
    # full-size one (60,000 images); tests/test_data.py covers the writing.
    write_synthetic_cifar10(tmp_path / "synthetic", n_train=5, n_test=100)
    code = main(
        [
            "train",
            "--dry-run",
            "--data-root",
            str(tmp_path),
            "--no-progress",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "using the synthetic CIFAR-10 stand-in" in out and "no --download" in out
    assert "epoch   1/1" in out and "training on 64 images" in out
    assert "done: 1 epoch, " in out  # one, not "1 epochs"
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_data_synth_writes_a_set_that_torchvision_reads(tmp_path, capsys):
    assert main(["data", "synth", "--root", str(tmp_path), "--n-train", "10", "--n-test", "4"]) == 0
    assert len(load_cifar10(tmp_path, train=False)) == 4
    assert "wrote 10 training and 4 test images" in capsys.readouterr().out


def test_every_train_flag_states_its_default_in_help():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag, default in [
        ("--epochs", "20"),
        ("--batch-size", "1"),
        ("--lr", "0.01"),
        ("--seed", "0"),
        ("--device", "auto"),
        ("--data-root", "data"),
    ]:
        assert flag in text
        assert f"(default: {default})" in text


def test_train_without_flags_takes_each_setting_from_train_configs_defaults():
    config = train_config(build_parser().parse_args(["train"]), "cpu", None)
    assert replace(config, step=None) == TrainConfig()


@pytest.mark.parametrize("command", ["train", "bench", "gate", "compare", "bench-ddp"])
def test_each_option_states_its_default_at_most_once_and_never_as_none(command):
    text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    flat = " ".join(text.split())  # argparse wraps long help over lines
    assert "(default: None)" not in flat
    assert not re.search(r"\(default: [^)]*\) \(default:", flat), flat


def test_an_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fly"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
        (["gate", "--threshold", "abc"], "argument --threshold"),
        (["gate", "--threshold", "5%%"], "argument --threshold"),
        (["bench", "--workers", "0"], "must be at least 1"),
        (["compare", "--seconds", "0", "a", "b"], "must be a positive finite number"),
    ],
    ids=["epochs", "threshold", "two-percent-signs", "workers", "seconds"],
)
def test_a_value_the_parser_rejects_is_one_line_that_points_at_help(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1, err  # no usage block before it
    assert err.startswith("cifar-spec: error: ") and message in err
    assert f"(see `cifar-spec {argv[0]} --help`)" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--cache-sim"], "--cache-sim simulates the caches under valgrind"),
        (["gate", "--cache-sim", "--metric", "time"], "needs --metric instructions"),
        (["bench-ddp", "--ranks", "1"], "--ranks 1: one rank is one process"),
    ],
    ids=["bench-cache-sim", "gate-cache-sim", "one-rank"],
)
def test_a_flag_that_would_change_nothing_is_refused_before_any_work(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_bench_json_on_stdout_is_the_document_alone_the_table_on_stderr(monkeypatch, capfd):
    import json

    from cifar_spec.bench import suite

    row = {"device": "cpu", "variant": "eager", "batch": 1, "images_per_s": 100.0}
    row.update(spread=0.01, speedup=1.0, speedup_ci=None, roofline_fraction=0.1)
    monkeypatch.setattr(suite, "measure_rows", lambda *args: [row])
    argv = ["bench", "--device", "cpu", "--variant", "eager", "--batch-size", "1"]
    assert main([*argv, "--json", "/dev/stdout"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out) == [row]  # what `| python -m json.tool` reads
    assert "images/s" in err and "cpu    eager" in err


def test_bench_prints_the_table_for_the_asked_variant_and_batch(capsys):
    assert (
        main(
            [
                "bench",
                "--device",
                "cpu",
                "--batch-size",
                "2",
                "--variant",
                "channels_last",
                "--variant",
                "eager",
                "--workers",
                "1",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "images/s" in out and "speed-up [95% CI]" in out and "roofline" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("cpu")]
    assert [(cols[1], cols[2]) for cols in lines] == [("eager", "2"), ("channels_last", "2")]
    assert lines[0][5] == "1.00x" and lines[1][6].startswith("[")  # the interval


def test_a_dry_run_refuses_epochs_it_would_drop_and_a_limit_above_the_split_is_said(
    tmp_path, capsys
):
    write_synthetic_cifar10(tmp_path / "synthetic", n_train=5, n_test=8)
    base = ["train", "--data-root", str(tmp_path), "--no-progress"]
    assert main([*base, "--dry-run", "--epochs", "5", "--limit", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dry-run trains one epoch, so --epochs 5" in err
    assert main([*base, "--epochs", "1", "--limit", "99999999"]) == 0
    assert "--limit 99999999 is more than the split holds: all 8 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, step",
    [
        (["--precision", "bf16"], "channels_last+one_call_sgd+bf16"),
        (["--eager"], "eager"),
        ([], "channels_last+one_call_sgd+manual_backward"),
    ],
    ids=["bf16", "eager", "default"],
)
def test_each_step_flag_trains_and_names_its_step(tmp_path, capsys, flags, step):
    write_synthetic_cifar10(tmp_path / "synthetic", n_train=5, n_test=8)
    code = main(["train", "--dry-run", "--data-root", str(tmp_path), "--no-progress", *flags])
    assert code == 0
    assert f"step: {step}\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--device", "gpu"], "--device gpu: not a device"),
        (["train", "--epochs", "0"], "epochs must be at least 1"),
        (["train", "--lr", "-1"], "lr must be a positive finite number"),
        (["train", "--limit", "0"], "limit must be at least 1 image"),
    ],
    ids=["device-typo", "zero-epochs", "negative-lr", "zero-limit"],
)
def test_bad_train_settings_exit_with_a_message_not_a_traceback(tmp_path, capsys, argv, message):
    assert main([*argv, "--data-root", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_a_negative_benchmark_batch_size_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--batch-size", "-1"])
    assert "must be at least 1" in capsys.readouterr().err


def one_line_error(capsys, argv, message, code=2):
    """Runs the command; it must end in rc `code` (2: a user's mistake) and one stderr line
    holding `message`, no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    return err


@pytest.fixture
def stand_in(tmp_path):
    """A data root whose stand-in is already written, small, so no test writes the full one."""
    write_synthetic_cifar10(tmp_path / "data" / "synthetic", n_train=5, n_test=16)
    return tmp_path / "data"


def train(stand_in, *flags):
    return ["train", "--data-root", str(stand_in), "--no-progress", "--limit", "8", *flags]


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def unwritable(tmp_path):
    """A folder no one may create files in: read-only to a user; /sys, for root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder if not os.access(folder, os.W_OK) else Path("/sys")
    folder.chmod(0o755)


def test_an_out_that_is_a_file_is_refused_before_any_data_is_read(tmp_path, stand_in, capsys):
    (tmp_path / "out").write_text("my notes")
    before = snapshot(tmp_path)
    one_line_error(
        capsys, train(stand_in, "--out", str(tmp_path / "out")), "is a file, not a folder"
    )
    assert snapshot(tmp_path) == before


def test_an_out_that_cannot_be_written_is_refused_before_the_first_step(
    stand_in, unwritable, capsys
):
    one_line_error(
        capsys, train(stand_in, "--out", str(unwritable / "run")), "cannot write to --out"
    )


def test_a_data_root_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "data").write_text("not a folder")
    one_line_error(
        capsys,
        ["train", "--data-root", str(tmp_path / "data")],
        "--data-root " + str(tmp_path / "data") + " is a file, not a folder",
    )
    assert (tmp_path / "data").read_text() == "not a folder"


def test_a_data_root_that_cannot_be_written_is_refused_in_one_line(unwritable, capsys):
    one_line_error(
        capsys,
        ["train", "--data-root", str(unwritable / "data"), "--dry-run"],
        "cannot write the data set in",
    )


def test_a_learning_rate_no_float32_holds_is_refused_before_work(stand_in, capsys):
    one_line_error(capsys, train(stand_in, "--lr", "1e308"), "a float32 can hold")


def test_ctrl_c_exits_130_keeps_the_last_epoch_and_the_line_says_how_to_resume(
    tmp_path, stand_in, capsys, monkeypatch
):
    import cifar_spec.loop as loop

    real = loop.train_epoch
    monkeypatch.setattr(
        loop,
        "train_epoch",
        lambda step, data, b, epoch, *a: (
            real(step, data, b, epoch, *a)
            if epoch < 2
            else (_ for _ in ()).throw(KeyboardInterrupt)
        ),
    )
    out = tmp_path / "run"
    one_line_error(
        capsys,
        train(stand_in, "--out", str(out), "--epochs", "3"),
        f"holds epoch 1: continue with `cifar-spec train --out {out} --resume`",
        code=130,  # the shell's code for Ctrl-C, not a user's mistake
    )
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_ctrl_c_before_the_first_epoch_exits_130_saying_nothing_was_saved(
    stand_in, capsys, monkeypatch
):
    import cifar_spec.cli.train as cli_train

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_train, "load_split", interrupted)
    assert main(train(stand_in)) == 130
    assert capsys.readouterr().err == "cifar-spec: interrupted; nothing was saved\n"


def test_a_full_disk_while_saving_ends_in_one_line_and_loses_nothing(
    tmp_path, stand_in, capsys, monkeypatch
):
    from cifar_spec import files

    out = tmp_path / "run"
    assert main(train(stand_in, "--out", str(out), "--epochs", "1")) == 0
    before = snapshot(out)
    monkeypatch.setattr(
        files.os,
        "fsync",
        lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
    )
    one_line_error(
        capsys,
        train(stand_in, "--out", str(out), "--epochs", "2", "--resume"),
        "No space left on device",
    )
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "saved, flags",
    [(False, []), (False, ["--resume"]), (True, []), (True, ["--resume", "--epochs", "2"])],
    ids=["new-run-empty-folder", "resume-before-its-first-checkpoint", "new-run", "resume"],
)
def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder(
    tmp_path, stand_in, capsys, saved, flags
):
    from cifar_spec.files import folder_lock

    out = tmp_path / "run"
    if saved:  # the holder has finished an epoch: its checkpoint is there
        assert main(train(stand_in, "--out", str(out), "--epochs", "1")) == 0
        capsys.readouterr()
    before = snapshot(out) if saved else {}
    with folder_lock(out, "a training run"):
        one_line_error(
            capsys,
            train(stand_in, "--out", str(out), *flags),
            f"it is in use by another cifar-spec process (pid {os.getpid()})",
        )
    after = {p: b for p, b in snapshot(out).items() if p.name != ".cifar-spec.lock"}
    assert after == {p: b for p, b in before.items() if p.name != ".cifar-spec.lock"}


def test_train_uses_the_set_data_synth_wrote_in_its_data_root(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "synth",
                "--root",
                str(tmp_path),
                "--n-train",
                "5",
                "--n-test",
                "8",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    assert main(["train", "--data-root", str(tmp_path), "--no-progress", "--epochs", "1"]) == 0
    assert "stand-in in " + str(tmp_path) + " (written by data synth)" in capsys.readouterr().out
    assert not (tmp_path / "synthetic").exists()


def test_a_runs_seed_never_rewrites_a_complete_synthetic_set(stand_in, capsys):
    def data_files():  # the lock file holds the last writer's pid: not data
        return {p: b for p, b in snapshot(stand_in).items() if p.name != ".cifar-spec.lock"}

    before = data_files()
    assert main(train(stand_in, "--synthetic", "--seed", "1", "--epochs", "1")) == 0
    assert main(train(stand_in, "--synthetic", "--seed", "-1", "--epochs", "1")) == 0
    assert data_files() == before


def test_a_planted_pickle_in_the_data_folder_runs_nothing(tmp_path, stand_in, capsys):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    planted = stand_in / "synthetic" / "cifar-10-batches-py" / "test_batch"
    planted.write_bytes(pickle.dumps(Payload(), protocol=2))
    one_line_error(capsys, train(stand_in), f"{planted} was refused unread")
    assert not marker.exists()


def test_a_truncated_batch_in_a_data_synth_folder_says_to_write_it_again(tmp_path, capsys):
    argv = ["data", "synth", "--root", str(tmp_path), "--n-train", "5", "--n-test", "8"]
    assert main([*argv, "--seed", "3"]) == 0
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    err = one_line_error(
        capsys,
        ["train", "--data-root", str(tmp_path), "--no-progress"],
        "test_batch is truncated or not in CIFAR-10's format (UnpicklingError",
    )
    assert f"`cifar-spec {' '.join(argv)} --seed 3 --signal 1.0`" in err
    assert "--download" not in err


def test_resuming_on_the_other_split_is_refused_naming_both(tmp_path, stand_in, capsys):
    out = str(tmp_path / "run")
    assert main(train(stand_in, "--out", out, "--epochs", "1", "--limit", "4")) == 0
    one_line_error(
        capsys,
        train(stand_in, "--out", out, "--epochs", "2", "--limit", "4", "--resume", "--train-split"),
        "trained on the synthetic test split",
    )


def test_a_batch_too_large_for_memory_is_refused_before_it_is_allocated(
    stand_in, capsys, monkeypatch
):
    import cifar_spec.memory as memory

    monkeypatch.setattr(memory, "free_memory", lambda device: 2**20)
    one_line_error(capsys, train(stand_in, "--batch-size", "4096"), "use a smaller --batch-size")


def test_a_run_without_out_says_once_that_it_saved_nothing(tmp_path, stand_in, capsys):
    assert main(train(stand_in, "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert out.count("nothing saved (no --out)") == 1
    assert out.splitlines()[-1].startswith("done: 1 epoch,")
    assert main(train(stand_in, "--epochs", "1", "--out", str(tmp_path / "run"))) == 0
    assert "nothing saved" not in capsys.readouterr().out


def test_resume_without_out_is_refused_naming_the_flag(stand_in, capsys):
    one_line_error(capsys, train(stand_in, "--resume"), "resuming needs the run folder: set --out")


def test_a_loss_that_turns_nan_stops_the_run_with_exit_4_and_names_the_flag_to_lower(
    stand_in, capsys
):
    # The first update at this rate overflows the weights; the next loss is not a number.
    err = one_line_error(capsys, train(stand_in, "--lr", "1e30"), "nothing was saved", code=4)
    assert "the loss is nan at epoch 1, step 1" in err
    assert err.endswith(
        f"try half the --lr: `cifar-spec train --data-root {stand_in} --limit 8 --no-progress "
        "--lr 5e+29`\n"
    )


def test_a_nan_stop_draws_its_epochs_and_gives_a_command_that_runs(
    tmp_path, stand_in, capsys, monkeypatch
):
    import cifar_spec.loop as loop

    real = loop.train_epoch

    def diverges_in_epoch_2(step, data, batch_size, epoch, *args):
        if epoch == 2:
            raise NonFiniteLoss("the loss is nan")
        return real(step, data, batch_size, epoch, *args)

    monkeypatch.setattr(loop, "train_epoch", diverges_in_epoch_2)
    out = tmp_path / "run"
    err = one_line_error(
        capsys,
        train(stand_in, "--out", str(out), "--epochs", "3", "--shuffle", "--eager"),
        f"the loss is nan; the run stopped: {out} holds epoch 1",
        code=4,
    )
    if plot.have_matplotlib():
        assert f"drawn in {out / 'loss.png'};" in err and (out / "loss.png").exists()
    command = err.split("`")[-2]
    # This run's flags in the parser's order, but a new run folder and half the rate.
    assert command == (
        f"cifar-spec train --epochs 3 --data-root {stand_in} --shuffle --limit 8 --no-progress "
        f"--eager --out {out}-lr0.005 --lr 0.005"
    )
    monkeypatch.undo()
    assert main(shlex.split(command)[1:]) == 0  # neither refused nor a resume
    assert (
        json.loads((out.parent / "run-lr0.005" / "history.json").read_text())["config"]["lr"]
        == 0.005
    )


TORCHRUN = {"TORCHELASTIC_ERROR_FILE": "/tmp/error.json", "RANK": "0", "LOCAL_RANK": "0"}


@pytest.mark.parametrize(
    ("world", "launcher"),
    [
        ({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "2"}, "torchrun --standalone --nproc-per-node 2"),
        ({"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "4"}, "torchrun --nproc-per-node 2 ..."),
    ],
)
def test_under_torchrun_the_nan_retry_and_the_resume_hint_start_torchrun_as_it_was_started(
    world, launcher
):
    from torch.distributed import run as torchrun

    from cifar_spec.cli.train import setting_names

    args = build_parser().parse_args(["train", "--device", "cpu", "--out", "runs/a", "--eager"])
    names = setting_names(args, {**TORCHRUN, **world})
    retry = names.retry.format(lr="0.005", out="runs/a-lr0.005")
    assert retry == (
        f"`{launcher} -m cifar_spec train --device cpu --eager --out runs/a-lr0.005 --lr 0.005`"
    )
    assert names.resume.format(out="runs/a").startswith(
        f"`{launcher} -m cifar_spec train --out runs/a --resume`"
    )
    if "..." not in launcher:  # a command torchrun itself takes, and runs as `-m cifar_spec`
        parsed = torchrun.get_args_parser().parse_args(shlex.split(retry.strip("`"))[1:])
        assert (parsed.standalone, parsed.nproc_per_node, parsed.module) == (True, "2", True)
        assert parsed.training_script == "cifar_spec"


def test_ranks_started_by_hand_are_told_the_command_each_was_started_with():
    from cifar_spec.cli.train import setting_names

    args = build_parser().parse_args(["train", "--out", "runs/a"])
    names = setting_names(args, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    assert names.retry.startswith("`cifar-spec train --out {out}")
    assert names.resume.startswith("`cifar-spec train --out {out} --resume`")


def test_a_step_that_cannot_run_is_refused_with_the_rules_reason(stand_in, capsys, monkeypatch):
    import cifar_spec.step as step

    monkeypatch.setattr(step.torch._dynamo, "is_dynamo_supported", lambda: False)
    one_line_error(
        capsys,
        train(stand_in, "--eager", "--compile"),
        "step compile cannot run on cpu: torch.compile is not supported",
    )


def test_a_bug_inside_fit_is_a_traceback_not_a_users_mistake(stand_in, capsys, monkeypatch):
    # A TypeError raised by our own code is cifar_spec's bug: worded as the user's mistake
    # ("cifar-spec: error: ...", exit 2) it would send them looking for a wrong flag.
    import cifar_spec.loop as loop

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")

    monkeypatch.setattr(loop, "train_epoch", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(train(stand_in, "--epochs", "1"))
    assert "cifar-spec: error" not in capsys.readouterr().err


def test_a_failed_write_that_names_no_file_is_a_traceback_too(stand_in, monkeypatch):
    import cifar_spec.loop as loop

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")  # no file named: not the user's to fix

    monkeypatch.setattr(loop, "train_epoch", broken)
    with pytest.raises(OSError, match="Input/output error"):
        main(train(stand_in, "--epochs", "1"))


DEVICE_COMMANDS = {
    "train": ["train"],
    "bench": ["bench"],
    "gate": ["gate"],
    "compare": ["compare", "python3", "python3"],
}


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_takes_the_same_values_with_the_same_help_in_every_command(command):
    parser = build_parser()
    for value in ("auto", "cpu", "cuda", "cuda:1"):
        args = parser.parse_args([*DEVICE_COMMANDS[command], "--device", value])
        assert value in (args.device if isinstance(args.device, list) else [args.device])
    helps = {
        action.help.split(", repeatable")[0]
        for sub in parser._subparsers._group_actions[0].choices.values()
        for action in sub._actions
        if "--device" in action.option_strings
    }
    assert helps == {"auto (cuda where there is one), cpu, cuda or cuda:N"}


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_a_gpu_index_this_machine_lacks_is_refused_in_one_line_never_changed(
    command, tmp_path, capsys, no_workers
):
    argv = [
        *DEVICE_COMMANDS[command],
        "--device",
        "cuda:7",
        "--out" if command == "train" else "--json",
    ]
    one_line_error(capsys, [*argv, str(tmp_path / "x")], "--device cuda:7")


def test_a_gpu_index_is_kept_where_the_machine_has_it(monkeypatch):
    from cifar_spec.cli import bench, options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert options.pick_device("cuda:1") == "cuda:1"
    assert bench.bench_devices(["cpu", "cuda:1"]) == ["cpu", "cuda:1"]
    assert bench.bench_devices(None) == ["cpu", "cuda"]


def test_data_calibrate_prints_each_published_figure_beside_its_measurement(synthetic_root, capsys):
    argv = ["data", "calibrate", "--root", str(synthetic_root), "--limit", "100"]
    assert main(argv + ["--epochs", "3", "--seeds", "0"]) == 0
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0] == "| figure | CIFAR-10 (published) | this data (measured) |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table[2:]}
    assert "0.4942, 0.4851, 0.4504" in rows["per-channel mean"]
    assert "39%" in rows["linear softmax, test accuracy"]
    assert "56%" in rows["this model, batch 64, 10 epochs"]
    assert "minimum at epoch 3" in rows["tutorial's run, seed 0: shape"]
    epochs = (
        rows["tutorial's run, seed 0: loss an image by epoch"].split(" | ")[2].rstrip(" |").split()
    )
    assert len(epochs) == 3 and all(0 < float(e) < 5 for e in epochs)
    assert "the tutorial's run, weight seed 0" in captured.err  # progress, off the table


@pytest.mark.parametrize(
    "marker, why",
    [
        ('{"complete": false}', "never completed"),
        ('{"n_train": 5, "n_test": 8, "seed": 0, "complete": true}', "written by an older"),
    ],
    ids=["cut-short", "older-generator"],
)
def test_a_stand_in_it_cannot_use_in_data_root_is_named_in_one_line_and_left_alone(
    tmp_path, capsys, marker, why
):
    folder = write_synthetic_cifar10(tmp_path, n_train=5, n_test=8)
    (folder / "synthetic.json").write_text(marker)
    before = snapshot(tmp_path)
    assert main(["train", "--data-root", str(tmp_path), "--no-progress", "--limit", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and why in err and f"data synth --root {tmp_path}" in err
    assert snapshot(tmp_path) == before  # nothing written beside it either

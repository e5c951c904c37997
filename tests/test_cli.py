"""The cifar-spec command, end to end, as a user types it."""

import pytest

from cifar_spec.cli import build_parser, main
from cifar_spec.data import load_cifar10, write_synthetic_cifar10


def test_summary_prints_the_tutorials_two_losses_and_the_parameter_count(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "0.6667" in out and "1.3333" in out and "145,578" in out


def test_train_dry_run_falls_back_to_the_synthetic_set_and_says_so(tmp_path, capsys):
    # A small stand-in where the fallback looks, so the test need not write the
    # full-size one (60,000 images); tests/test_data.py covers the writing.
    write_synthetic_cifar10(tmp_path / "synthetic", n_train=5, n_test=100)
    code = main(["train", "--dry-run", "--data-root", str(tmp_path), "--no-progress",
                 "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0
    assert "using the synthetic CIFAR-10 stand-in" in out and "no --download" in out
    assert "epoch   1/1" in out and "training on 64 images" in out
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_data_synth_writes_a_set_that_torchvision_reads(tmp_path, capsys):
    assert main(["data", "synth", "--root", str(tmp_path), "--n-train", "10",
                 "--n-test", "4"]) == 0
    assert len(load_cifar10(tmp_path, train=False)) == 4
    assert "wrote 10 training and 4 test images" in capsys.readouterr().out


def test_every_train_flag_states_its_default_in_help():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag, default in [("--epochs", "20"), ("--batch-size", "1"), ("--lr", "0.01"),
                          ("--seed", "0"), ("--device", "auto"), ("--data-root", "data")]:
        assert flag in text
        assert f"(default: {default})" in text


def test_an_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fly"])
    assert info.value.code == 2


def test_bench_prints_the_table_for_the_asked_variant_and_batch(capsys):
    assert main(["bench", "--device", "cpu", "--batch-size", "2", "--variant", "channels_last",
                 "--variant", "eager", "--seconds", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "roofline" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("cpu")]
    assert [(cols[1], cols[2]) for cols in lines] == [("eager", "2"), ("channels_last", "2")]
    assert lines[0][4] == "1.00x"


@pytest.mark.parametrize("flags, step", [
    (["--precision", "bf16"], "channels_last+one_call_sgd+bf16"),
    (["--eager"], "eager"),
    ([], "channels_last+one_call_sgd+manual_backward"),
], ids=["bf16", "eager", "default"])
def test_each_step_flag_trains_and_names_its_step(tmp_path, capsys, flags, step):
    write_synthetic_cifar10(tmp_path / "synthetic", n_train=5, n_test=8)
    code = main(["train", "--dry-run", "--data-root", str(tmp_path), "--no-progress", *flags])
    assert code == 0
    assert f"step: {step}\n" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--device", "gpu"], "--device gpu: not a device"),
    (["train", "--epochs", "0"], "epochs must be at least 1"),
    (["train", "--lr", "-1"], "lr must be a positive finite number"),
    (["train", "--limit", "0"], "limit must be at least 1 image"),
], ids=["device-typo", "zero-epochs", "negative-lr", "zero-limit"])
def test_bad_train_settings_exit_with_a_message_not_a_traceback(tmp_path, capsys, argv, message):
    assert main([*argv, "--data-root", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_a_negative_benchmark_batch_size_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--batch-size", "-1"])
    assert "must be at least 1" in capsys.readouterr().err

"""Every kind of failure in the Errors table of docs/resume-and-errors.md ends in one line, with no stack trace.

The kinds refused before training run here through main() in this process, one case each; kinds
tested elsewhere are mapped to their test (EXISTING), and test_every_kind_in_the_docs_has_a_test
keeps the table and the tests from drifting apart.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mnist_rnn.commands import dispatch as commands
from mnist_rnn.errors import ConfigError
from mnist_rnn.model.classifier import RecurrentClassifier
from mnist_rnn.run import trainer_settings
from tests.conftest import REPO, TINY, cli_error, run_main, subprocess_env, write_fake_mnist

DOCS = REPO / "docs" / "resume-and-errors.md"


def _file(name: str, content: bytes):
    def make(folder: Path) -> None:
        (folder / name).write_bytes(content)

    return make


def _folder(name: str):
    return lambda folder: (folder / name).mkdir()


FIT = ("fit", "-c", TINY)
# kind (the docs table's first column) -> (what the test folder needs, the command, words the message must hold)
KINDS = {
    "--trainer.max_epochs below 1": (
        None,
        (*FIT, "--trainer.max_epochs", "-5"),
        "--trainer.max_epochs must be at least 1, or -1",
    ),
    "--trainer.max_steps 0": (
        None,
        (*FIT, "--trainer.max_steps", "0"),
        "--trainer.max_steps must be at least 1, or -1",
    ),
    "--trainer.limit_train_batches 0": (
        None,
        (*FIT, "--trainer.limit_train_batches", "0"),
        "0 leaves nothing to train on",
    ),
    "--trainer.limit_val_batches negative": (
        None,
        (*FIT, "--trainer.limit_val_batches", "-1"),
        "--trainer.limit_val_batches must be a fraction in [0, 1]",
    ),
    "--trainer.val_check_interval 0 or a fraction above 1": (
        None,
        (*FIT, "--trainer.val_check_interval", "1.5"),
        "--trainer.val_check_interval must be a fraction of an epoch in (0, 1]",
    ),
    "--trainer.val_check_interval beyond the epoch": (
        None,
        (*FIT, "--trainer.val_check_interval", "30"),
        "30 is more than the 20 training batches of an epoch",
    ),
    "--trainer.check_val_every_n_epoch 0": (
        None,
        (*FIT, "--trainer.check_val_every_n_epoch", "0"),
        "--trainer.check_val_every_n_epoch must be at least 1, or null",
    ),
    "--trainer.accumulate_grad_batches below 1": (
        None,
        (*FIT, "--trainer.accumulate_grad_batches", "0"),
        "--trainer.accumulate_grad_batches must be at least 1, got 0",
    ),
    "--trainer.log_every_n_steps negative": (
        None,
        (*FIT, "--trainer.log_every_n_steps", "-1"),
        "--trainer.log_every_n_steps must be at least 1, or 0",
    ),
    "--trainer.gradient_clip_val negative": (
        None,
        (*FIT, "--trainer.gradient_clip_val", "-1"),
        "--trainer.gradient_clip_val must be a number of at least 0, or null",
    ),
    "--trainer.num_sanity_val_steps below -1": (
        None,
        (*FIT, "--trainer.num_sanity_val_steps", "-5"),
        "--trainer.num_sanity_val_steps must be at least 0, or -1",
    ),
    "--trainer.num_nodes below 1": (
        None,
        (*FIT, "--trainer.num_nodes", "0"),
        "--trainer.num_nodes must be at least 1, got 0",
    ),
    "--trainer.devices 0 or not a number": (
        None,
        (*FIT, "--trainer.devices", "0"),
        "--trainer.devices 0 is not a number of devices; pass a count of at least 1, or auto",
    ),
    "an unknown --trainer.accelerator": (
        None,
        (*FIT, "--trainer.accelerator", "foo"),
        "--trainer.accelerator foo is not an accelerator; pass cpu, gpu or auto",
    ),
    "an accelerator this machine lacks (tpu, mps)": (
        None,
        (*FIT, "--trainer.accelerator", "tpu"),
        "asks for a TPU (torch_xla), which this machine lacks; pass --trainer.accelerator cpu",
    ),
    "an unknown --trainer.strategy": (
        None,
        (*FIT, "--trainer.strategy", "foo"),
        "--trainer.strategy foo is not a strategy Lightning knows",
    ),
    "a value none of the setting's types takes": (
        None,
        (*FIT, "--trainer.max_epochs", "abc"),
        "--trainer.max_epochs abc is not valid here: it takes int, null",
    ),
    "--trainer.logger false beside LearningRateMonitor": (
        None,
        (*FIT, "--trainer.logger", "false"),
        "--trainer.logger false leaves LearningRateMonitor",
    ),
    "a Trainer setting only Lightning checks": (
        None,
        (*FIT, "--trainer.gradient_clip_algorithm", "foo"),
        "Lightning refuses the settings: `gradient_clip_algorithm` foo is invalid. Allowed algorithms:",
    ),
    "--seed_everything outside 0..2**32-1": (
        None,
        (*FIT, "--seed_everything", "-1"),
        "--seed_everything must lie in 0..4294967295, got -1",
    ),
    "an unknown option": (
        None,
        (*FIT, "--bogus", "1"),
        "unrecognized arguments: --bogus 1 (options: mnist-rnn fit --help)",
    ),
    "an unknown command": (
        None,
        ("fitt",),
        "invalid choice: 'fitt' (choose from 'fit', 'validate', 'test', 'predict')",
    ),
    "-c file that does not exist": (None, ("fit", "-c", "nope.yaml"), "File does not exist"),
    "-c file that is empty": (
        _file("empty.yaml", b""),
        ("fit", "-c", "empty.yaml"),
        "-c empty.yaml holds nothing, not settings",
    ),
    "-c file that is not YAML": (
        _file("bad.yaml", b"trainer: [unclosed\n"),
        ("fit", "-c", "bad.yaml"),
        "-c bad.yaml is not valid YAML (line 2, column 1:",
    ),
    "-c file that is not text": (
        _file("bin.yaml", b"\x00\xff\xfe"),
        ("fit", "-c", "bin.yaml"),
        "-c bin.yaml is not a text file (not UTF-8)",
    ),
    "-c file that is not a mapping": (
        _file("list.yaml", b"- a\n- b\n"),
        ("fit", "-c", "list.yaml"),
        "-c list.yaml holds a list, not settings",
    ),
    "-c file with an unknown key": (
        _file("typo.yaml", b"model:\n  hiden_size: 3\n"),
        ("fit", "-c", "typo.yaml"),
        "does not accept option 'model.hiden_size'",
    ),
    "--ckpt_path empty": (None, ("test", "--ckpt_path", ""), "--ckpt_path is empty; pass a checkpoint file"),
    "--data.data_dir that is a file": (
        _file("data", b"x"),
        (*FIT, "--data.data_dir", "data"),
        "--data.data_dir data is a file; point it at a folder",
    ),
    "--data.mean outside [0, 1]": (
        None,
        (*FIT, "--data.mean", "2"),
        "--data.mean 2 is not valid here: it takes auto, ClosedUnitInterval (options: mnist-rnn fit --help)",
    ),
    "--data.val_size out of range": (
        None,
        (*FIT, "--data.val_size", "60000"),
        "data.val_size must lie in 1..59999, got 60000",
    ),
    "--data.val_size beyond a data folder's images": (
        lambda folder: write_fake_mnist(folder / "data", n_train=300, n_test=10),
        (*FIT, "--data.data_dir", "data", "--data.val_size", "300"),
        "data.val_size must lie in 1..299, got 300",
    ),
    "--data.max_shift out of range": (
        None,
        (*FIT, "--data.max_shift", "30"),
        "--data.max_shift 30 is not valid here: it takes ShiftPixels (v>=0 and v<=8)",
    ),
    "--max_upload_mb infinite": (
        None,
        ("serve", "--ckpt_path", "x", "--max_upload_mb", "inf"),
        "--max_upload_mb inf is not valid here: it takes a finite number above 0",
    ),
    "sweep file that is not text": (
        _file("bin.yaml", b"\x00\xff\xfe"),
        ("sweep", "-c", "bin.yaml"),
        "bin.yaml: cannot be read as YAML ('utf-8' codec",
    ),
    "export --output under a file": (
        _file("afile", b"x"),
        ("export", "--output", "afile/m.onnx"),
        "cannot create the folder of afile/m.onnx",
    ),
}


# The Trainer settings that trainer_settings.check's table refuses: one code path, so two run here
# through the whole command and the rest under --slow; test_each_trainer_rule_refuses tries them all at once.
RULES = [k for k, (_, args, words) in KINDS.items()
         if args[3:4] and args[3].removeprefix("--trainer.") in trainer_settings.RULES and words.startswith(f"{args[3]} must")]
THROUGH_THE_COMMAND = ("--trainer.max_epochs below 1", "--trainer.num_nodes below 1")


@pytest.mark.parametrize("prepare,args,words", [
    pytest.param(*v, id=k, marks=[pytest.mark.slow] if k in RULES and k not in THROUGH_THE_COMMAND else [])
    for k, v in KINDS.items()
])  # fmt: skip
def test_a_kind_refused_before_training_is_one_line(tmp_path, monkeypatch, capsys, prepare, args, words):
    monkeypatch.chdir(tmp_path)
    if prepare:
        prepare(tmp_path)
    assert words in cli_error(capsys, *args)  # status 2, one `mnist-rnn:` line, no traceback
    assert not list(tmp_path.glob("runs/**/*.*"))  # no checkpoint, event file or config: nothing half-made



def test_a_data_folder_smaller_than_val_size_is_refused_only_by_the_commands_that_split_it(tmp_path, monkeypatch, capsys):
    # test scores the folder's test images with the bundled model's saved statistics: its training
    # images are never split, so val_size (5000 from the model's settings) is not theirs to hold.
    write_fake_mnist(tmp_path / "data", n_train=300, n_test=10)
    status, out, err = run_main("test", "--data.data_dir", "data", cwd=tmp_path)
    assert status == 0 and "test/acc" in out, err
    monkeypatch.chdir(tmp_path)
    assert "data.val_size must lie in 1..299, got 5000" in cli_error(capsys, "validate", "--data.data_dir", "data")
    assert not list(tmp_path.glob("runs/**/*.*"))

TINY_TRAINER = {"max_epochs": 2, "max_steps": -1, "limit_train_batches": 20.0, "limit_val_batches": 2.0,
                "limit_test_batches": 2.0, "limit_predict_batches": 2.0, "val_check_interval": None,
                "check_val_every_n_epoch": 1, "accumulate_grad_batches": 1, "log_every_n_steps": 5, "num_nodes": 1}


def test_each_trainer_rule_refuses_and_tinys_settings_pass():
    trainer_settings.check(TINY_TRAINER, "fit")
    assert len(RULES) >= 10, RULES  # 12 kinds of KINDS are settings of the rules' table
    for kind in RULES:
        _, args, words = KINDS[kind]
        with pytest.raises(ConfigError) as refused:
            trainer_settings.check({**TINY_TRAINER, args[3].removeprefix("--trainer."): yaml.safe_load(args[4])}, "fit")
        assert words in str(refused.value), kind


def _read_only(tmp_path: Path) -> Path:
    """A read-only file system, which root cannot write either (chmod does not stop root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if result.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here: {result.stderr.strip()}")
    return folder


def test_a_read_only_run_folder_and_export_folder(tmp_path, monkeypatch, capsys):
    folder = _read_only(tmp_path)
    monkeypatch.chdir(tmp_path)
    try:
        message = cli_error(capsys, *FIT, "--trainer.logger.init_args.save_dir", "ro/runs")
        assert message.startswith(
            "cannot create the run folder ro/runs/tiny (Read-only file system); choose a writable"
        )
        assert "cannot write into ro (" in cli_error(capsys, "export", "--output", "ro/m.onnx", "--check_images", "10")
        message = cli_error(capsys, *FIT, "--data.download", "true", "--data.data_dir", "ro/mnist")
        assert message.startswith("downloading MNIST into ro/mnist failed (") and "Read-only file system" in message
        assert not list(folder.iterdir())
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _cpu_out_of_memory():
    torch.empty(1 << 62, dtype=torch.uint8)  # the CPU allocator's real failure, at once: nothing is allocated


def _cuda_out_of_memory():
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 8 GiB")


@pytest.mark.parametrize(
    "error",
    [
        _cpu_out_of_memory,
        pytest.param(_cuda_out_of_memory, marks=pytest.mark.slow),  # the same line, from torch's CUDA type
    ],
    ids=["cpu_allocator", "cuda"],
)
def test_out_of_memory_in_training_names_the_batch_size(tmp_path, monkeypatch, capsys, error):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(RecurrentClassifier, "training_step", lambda self, batch, batch_idx: error())
    message = cli_error(capsys, *FIT, "--trainer.num_sanity_val_steps", "0")
    assert re.fullmatch(
        r"out of memory \([Tt]ried to allocate [^)]*\) at --data\.batch_size 64 \(evaluation:"
        r" --data\.eval_batch_size 500\); pass smaller ones, e\.g\. --data\.batch_size 32 .*",
        message,
    )


@pytest.mark.parametrize(
    "error, text",
    [
        (ZeroDivisionError("division by zero\nsecond line"), "ZeroDivisionError: division by zero second line"),
        # An OSError that is not a full disk used to be re-raised past this net: a stack trace.
        (PermissionError(13, "Permission denied", "/some/folder"), "PermissionError: [Errno 13] Permission denied: '/some/folder'"),
    ],
)
def test_an_unexpected_error_is_one_line_that_asks_for_a_report(monkeypatch, capsys, error, text):
    def fail(name, args):
        raise error

    monkeypatch.setattr(commands, "run_own_command", fail)
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["serve"])
    assert exit_info.value.code == 1
    report = "rerun with MNIST_RNN_DEBUG=1 for the stack trace and report it"
    assert capsys.readouterr().err == f"mnist-rnn: error: unexpected {text}; {report}\n"
    monkeypatch.setenv("MNIST_RNN_DEBUG", "1")
    with pytest.raises(type(error)):
        commands.main(["serve"])


def test_ctrl_c_outside_training_is_one_line_and_status_130(monkeypatch, tmp_path):
    def interrupted(name, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run_own_command", interrupted)
    status, _, err = run_main("export", cwd=tmp_path)
    assert (
        status == 130
        and err
        == "mnist-rnn: stopped by SIGINT outside training (what was already saved is kept); run the command again\n"
    )
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() gave the process its handlers back


# `mnist-rnn fit` held in its start-up (torch and Lightning imported, the config being read) until the
# test's signal: a signal before training, at a point the test knows it has reached.
HELD_IN_START_UP = """
import sys, time
from mnist_rnn.commands import cli
from mnist_rnn.commands import dispatch as commands

def held(path):
    print("starting", flush=True)
    time.sleep(60)
    return path

cli.check_config = held
commands.main(sys.argv[1:])
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_during_start_up_is_one_line_and_leaves_nothing(tmp_path, signum):
    # SIGINT as a terminal sends it: a shell's background job (a test run with &) would ignore it
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen([sys.executable, "-c", HELD_IN_START_UP, *FIT], cwd=tmp_path, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore)  # fmt: skip
    assert process.stdout.readline() == "starting\n"
    os.kill(process.pid, signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert err == f"mnist-rnn: stopped by {name} outside training (what was already saved is kept); run the command again\n"
    assert not (tmp_path / "runs").exists()


# Kinds tested where their code is tested: kind -> (the test file in tests/, the test).
EXISTING = {
    "an embedded dataset file altered": ("test_errors", "test_a_damaged_embedded_dataset_file"),
    "an embedded dataset file truncated": ("test_errors", "test_a_damaged_embedded_dataset_file"),
    "an embedded dataset file missing": ("test_errors", "test_a_damaged_embedded_dataset_file"),
    "a truncated file in --data.data_dir": ("test_errors", "test_a_bad_data_dir"),
    "--data.data_dir lacking a file": ("test_errors", "test_a_bad_data_dir"),
    "--data.data_dir with no IDX files": ("test_errors", "test_a_bad_data_dir"),
    "--data.data_dir that does not exist": ("test_errors", "test_a_bad_data_dir"),
    "--data.download into a read-only folder": ("test_error_kinds", "test_a_read_only_run_folder_and_export_folder"),
    "a checkpoint this user may not read": ("test_checkpoints", "test_a_checkpoint_that_cannot_be_read_is_refused_in_one_line"),
    "a checkpoint that does not exist, or a folder": (
        "test_checkpoints",
        "test_a_bad_checkpoint_is_refused_in_one_line_before_anything_runs",
    ),
    "a truncated or corrupted checkpoint": (
        "test_checkpoints",
        "test_a_bad_checkpoint_is_refused_in_one_line_before_anything_runs",
    ),
    "a file that is not a checkpoint": (
        "test_checkpoints",
        "test_a_bad_checkpoint_is_refused_in_one_line_before_anything_runs",
    ),
    "a checkpoint carrying pickled code": (
        "test_checkpoints",
        "test_a_checkpoint_carrying_pickled_code_is_refused_without_running_it",
    ),
    "a checkpoint of another model or shape": (
        "test_checkpoints",
        "test_a_bad_checkpoint_is_refused_in_one_line_before_anything_runs",
    ),
    "fit from a weights-only checkpoint": (
        "test_checkpoints",
        "test_a_bad_checkpoint_is_refused_in_one_line_before_anything_runs",
    ),
    "a setting that contradicts the checkpoint": (
        "test_checkpoint_settings",
        "test_a_flag_that_contradicts_the_checkpoint_is_refused",
    ),
    "--ckpt_path last finding a run of other settings": (
        "test_resume",
        "test_last_refuses_a_run_made_with_other_settings_naming_both",
    ),
    "--ckpt_path last with nothing to resume": (
        "test_checkpoints",
        "test_last_with_no_run_to_resume_is_an_error_not_a_fresh_start",
    ),
    "a changed run length on resume": ("test_resume", "test_changing_the_run_length_on_resume_is_refused"),
    "a model setting out of range": ("test_errors", "test_an_invalid_setting_is_rejected_before_training"),
    "an unknown optimizer or a value of the wrong type": (
        "test_errors",
        "test_an_invalid_setting_is_rejected_before_training",
    ),
    "a run folder that is a file": ("test_runs", "test_an_output_folder_that_cannot_be_written"),
    "a run folder on a read-only file system": ("test_error_kinds", "test_a_read_only_run_folder_and_export_folder"),
    "a full disk at a checkpoint": ("test_full_disk", "test_a_real_full_disk_during_fit_is_one_line_and_the_run_continues_exactly"),
    "a full disk at the events file": ("test_full_disk", "test_a_full_disk_at_a_run_file_is_one_line_naming_it"),
    "a full disk at config.yaml or hparams.yaml": ("test_full_disk", "test_a_full_disk_at_a_run_file_is_one_line_naming_it"),
    "a full disk at the predictions CSV": ("test_full_disk", "test_a_full_disk_at_the_predictions_leaves_no_partial_csv"),
    "a full disk at the ONNX or .pt2 file": ("test_full_disk", "test_a_full_disk_at_an_export_leaves_no_file"),
    "a full disk at the sweep's study or results.csv": ("test_sweep", "test_a_full_disk_under_the_results_or_the_study_is_one_line"),
    "a full disk at a write no writer names": ("test_full_disk", "test_a_full_disk_with_no_file_named_is_one_line"),
    "--trainer.accelerator gpu without CUDA": (
        "test_hardware",
        "test_hardware_a_run_asks_for_that_is_not_there_is_one_line",
    ),
    "more GPUs than exist": ("test_hardware", "test_hardware_a_run_asks_for_that_is_not_there_is_one_line"),
    "--threads below 1": ("test_hardware", "test_hardware_a_run_asks_for_that_is_not_there_is_one_line"),
    "a precision this CPU cannot run": (
        "test_checkpoint_settings",
        "test_an_explicit_bf16_lstm_request_runs_where_the_cpu_has_the_kernel_and_is_refused_elsewhere",
    ),
    "an out-of-memory batch size": ("test_error_kinds", "test_out_of_memory_in_training_names_the_batch_size"),
    "training that diverges": (
        "test_resume",
        "test_non_finite_training_stops_naming_step_and_cause_and_keeps_the_last_good_checkpoint",
    ),
    "a signal during start-up": ("test_error_kinds", "test_a_signal_during_start_up_is_one_line_and_leaves_nothing"),
    "test, validate or predict with settings of another model than the bundled one": (
        "test_checkpoint_settings",
        "test_a_flag_that_contradicts_the_checkpoint_is_refused",
    ),
    "predict with nothing to predict": ("test_predict", "test_nothing_to_predict_is_a_one_line_error"),
    "predictions that cannot be written": (
        "test_predict",
        "test_an_output_that_cannot_be_written_fails_before_predicting",
    ),
    "serve, export or sweep without its extra": (
        "test_bundled",
        "test_a_command_without_its_extras_libraries_names_the_extra",
    ),
    "a port in use": ("test_serve", "test_a_busy_port_is_refused_and_ctrl_c_stops_cleanly"),
    "--host not of this machine": ("test_serve", "test_bad_start_settings_are_one_line_errors"),
    "--port out of range": ("test_serve", "test_bad_start_settings_are_one_line_errors"),
    "--max_upload_mb 0 or below": ("test_serve", "test_bad_start_settings_are_one_line_errors"),
    "export --output that exists": ("test_export", "test_existing_files_are_never_replaced_without_overwrite"),
    "export --output that is a folder": ("test_export", "test_bad_export_settings_are_one_line_errors"),
    "export --output in a read-only folder": ("test_error_kinds", "test_a_read_only_run_folder_and_export_folder"),
    "export --check_images out of range": ("test_export", "test_bad_export_settings_are_one_line_errors"),
    "a sweep file that does not exist": ("test_sweep", "test_a_missing_sweep_file_and_bad_options_are_one_line_errors"),
    "sweep --parallel below 1": ("test_sweep", "test_a_missing_sweep_file_and_bad_options_are_one_line_errors"),
    "a bad sweep file": ("test_sweep", "test_bad_sweep_files_are_refused_before_any_trial"),
    "sweep --storage without its driver": ("test_sweep_postgres", "test_a_storage_url_without_its_driver_is_one_line_before_anything"),
    "sweep --storage that is not a database URL": ("test_sweep_postgres", "test_a_bad_storage_url_or_an_unreachable_server_is_one_line"),
    "sweep --storage whose server cannot be reached": (
        "test_sweep_postgres",
        "test_a_bad_storage_url_or_an_unreachable_server_is_one_line",
    ),
}


def _docs_kinds() -> list[str]:
    """The first column of the Errors table, without its markdown quoting."""
    section = DOCS.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| kind ", "| ---"))
    ]
    return [row.split(" | ")[0].removeprefix("| ").replace("`", "") for row in rows]


def test_every_kind_in_the_docs_has_a_test():
    kinds = _docs_kinds()
    assert len(kinds) >= 40 and len(set(kinds)) == len(kinds), kinds  # issue 23: at least 40 kinds
    assert set(kinds) == set(KINDS) | set(EXISTING)
    assert not set(KINDS) & set(EXISTING)
    for kind, (module, name) in EXISTING.items():
        tree = ast.parse((REPO / "tests" / f"{module}.py").read_text())
        assert name in {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}, (
            f"{kind}: no tests/{module}.py::{name}"
        )


@pytest.mark.slow  # a whole fit: 6 s
def test_a_bf16_true_fit_reaches_its_end(tmp_path, monkeypatch, capsys):
    # Found trying precisions: RecurrenceViews fed float32 digits to bf16 weights at the end of fit (a ValueError).
    status, out, err = run_main(*FIT, "--trainer.precision", "bf16-true", "--trainer.max_epochs", "1",
                                "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", cwd=tmp_path)  # fmt: skip
    assert status == 0, err
    assert "test it: mnist-rnn test" in out

"""Resuming after a kill, and stopping on a signal or on a non-finite loss."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_rnn.commands import main
from mnist_rnn.run.checkpoints import read_checkpoint
from tests.conftest import TINY, run_cli, subprocess_env

LAST = Path("runs/tiny/version_0/checkpoints/last.ckpt")

# Two epochs of 40 steps, dropout between two layers (so that the random generators matter), every
# step logged, and last.ckpt also written after every 0.2 s of training.
RESUMABLE = """
trainer:
  max_epochs: 2
  limit_train_batches: 40
  log_every_n_steps: 1
  callbacks+:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {filename: last, train_time_interval: "0:00:00.2", enable_version_counter: false}
model:
  num_layers: 2
  dropout: 0.3
"""


def logged_steps(run_dir: Path, tag: str = "train/loss") -> list[int]:
    """The steps of a scalar as TensorBoard shows them (it hides what a restart purged)."""
    return [event.step for event in EventAccumulator(str(run_dir)).Reload().Scalars(tag)]


def test_sigkill_mid_epoch_then_resume_continues_the_same_run(tmp_path):
    config = tmp_path / "resumable.yaml"
    config.write_text(RESUMABLE)
    work = tmp_path / "work"
    work.mkdir()
    fit = [sys.executable, "-m", "mnist_rnn", "fit", "-c", TINY, "-c", str(config)]
    paced = fit + ["--trainer.callbacks+=tests.interrupts.Pace"]

    # SIGKILL (no handler runs, nothing is saved on the way out) as step 21 starts: by then the paced
    # steps (>= 0.02 s each) have passed 0.2 s of training at least once, so last.ckpt is of a step
    # inside epoch 0, whichever the machine's pace.
    killer = json.dumps({"class_path": "tests.interrupts.KillAt", "init_args": {"folder": "k", "phase": "train", "step": 20}})
    run = subprocess.run(paced + [f"--trainer.callbacks+={killer}"], cwd=work, env=subprocess_env(), capture_output=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    killed_at = read_checkpoint(work / LAST)
    assert killed_at["epoch"] == 0 and 0 < killed_at["global_step"] <= 20, "the kill should land mid-epoch"

    resumed = subprocess.run(paced + ["--ckpt_path", "last"], cwd=work, env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming runs/tiny/version_0 from {LAST} (epoch 1, after step {killed_at['global_step']})" in resumed.stdout

    # One run, logged once per step from the first to the last: nothing repeated, nothing going back.
    # The one point that can be missing is that of the checkpoint's own step (global_step - 1):
    # Lightning hands it to the logger just after the checkpoint callbacks, and RunLogger flushes it
    # at once, but a kill within those milliseconds (fsync of the checkpoint's folder included) loses it.
    assert sorted(p.name for p in (work / "runs" / "tiny").iterdir()) == ["version_0"]
    steps = logged_steps(work / "runs" / "tiny" / "version_0")
    assert steps == sorted(set(steps))
    assert set(range(80)) - set(steps) <= {killed_at["global_step"] - 1}, steps
    final = read_checkpoint(work / LAST)
    assert (final["epoch"], final["global_step"]) == (1, 80)

    # The same run without the kill: identical weights mean the batches, dropout masks, optimizer,
    # schedule and best-metric state all carried on exactly.
    (tmp_path / "uninterrupted").mkdir()
    run_cli("fit", "-c", TINY, "-c", str(config), cwd=tmp_path / "uninterrupted")
    reference = read_checkpoint(tmp_path / "uninterrupted" / LAST)
    assert reference["global_step"] == 80
    assert final["precision"] == reference["precision"]  # the same machine picks the same (docs/precision.md)
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, monkeypatch, capsys, signum):
    monkeypatch.chdir(tmp_path)
    handler_before = signal.getsignal(signum)
    sender = json.dumps({"class_path": "tests.interrupts.SendSignal", "init_args": {"step": 5, "signum": int(signum)}})
    args = ["fit", "-c", TINY, f"--trainer.callbacks+={sender}"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 128 + signum
    resume = f"mnist-rnn {shlex.join(args)} --ckpt_path last"
    err = capsys.readouterr().err
    assert f"mnist-rnn: stopped by {signum.name} in epoch 1, after step 6; saved {LAST}\nresume with: {resume}\n" in err
    assert "Traceback" not in err
    assert read_checkpoint(LAST)["global_step"] == 6  # the batch under way when the signal came was finished
    assert signal.getsignal(signum) == handler_before

    main(shlex.split(resume)[1:])
    assert read_checkpoint(LAST)["global_step"] == 40
    assert sorted(os.listdir("runs/tiny")) == ["version_0"]


def test_resuming_from_an_older_checkpoint_leaves_the_newer_ones_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sender = json.dumps({"class_path": "tests.interrupts.SendSignal", "init_args": {"step": 5}})
    with pytest.raises(SystemExit):
        main(["fit", "-c", TINY, f"--trainer.callbacks+={sender}"])
    older = LAST.with_name("step6.ckpt")
    older.write_bytes(LAST.read_bytes())
    os.utime(older, (1, 1))  # written long before last.ckpt
    main(["fit", "-c", TINY, "--ckpt_path", "last"])
    finished = LAST.read_bytes()

    main(["fit", "-c", TINY, "--ckpt_path", str(older)])
    assert f"resuming in a new run folder from {older} (epoch 1, after step 6)" in capsys.readouterr().out
    assert LAST.read_bytes() == finished
    assert read_checkpoint(Path("runs/tiny/version_1/checkpoints/last.ckpt"))["global_step"] == 40


def test_last_ckpt_is_brought_up_to_a_newer_checkpoint_and_never_made_where_a_run_has_none(tmp_path, capsys):
    # The soak's test_a_fit_killed_between_the_files_of_its_last_save... covers the copy in a real resumed fit.
    from mnist_rnn.run.resume import catch_up_last

    best, last = tmp_path / "epoch01-val_acc0.9000.ckpt", tmp_path / "last.ckpt"
    best.write_bytes(b"the newest state")
    catch_up_last(best)
    assert sorted(p.name for p in tmp_path.iterdir()) == [best.name]  # a user's run without last.ckpt gets none

    last.write_bytes(b"a validation behind")
    catch_up_last(last)
    assert last.read_bytes() == b"a validation behind"  # resumed from last.ckpt itself: nothing to do
    catch_up_last(best)
    assert last.read_bytes() == b"the newest state" and sorted(p.name for p in tmp_path.iterdir()) == [best.name, last.name]
    assert capsys.readouterr().out == f"last.ckpt brought up to {best.name}, the run's newest checkpoint\n"


def test_changing_the_run_length_on_resume_is_refused(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["fit", "-c", TINY, "--ckpt_path", str(tiny_run["cwd"] / "runs/tiny/version_0/checkpoints/last.ckpt"),
              "--trainer.max_epochs", "3"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "mnist-rnn: error: the checkpoint's onecycle schedule was built for 40 steps but this run has 60;"
        " resume with the run's own --trainer.max_epochs / --trainer.max_steps"
    )


EVERY_STEP = """
trainer:
  callbacks+:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {filename: last, train_time_interval: "0:00:00", enable_version_counter: false}
"""


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])  # both run on every CPU (docs/precision.md)
def test_non_finite_training_stops_naming_step_and_cause_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, precision):
    # The weights are set to inf at step 5 (tests/interrupts.py): a divergence in any precision, unlike a
    # huge learning rate, whose fp32 run stayed finite on CPUs without bf16 (issue 18).
    monkeypatch.chdir(tmp_path)
    Path("every_step.yaml").write_text(EVERY_STEP)
    with pytest.raises(SystemExit) as stop:
        main(["fit", "-c", TINY, "-c", "every_step.yaml", "--model.lr", "0.01", "--trainer.precision", precision,
              "--trainer.callbacks+=tests.interrupts.PoisonWeights", "--trainer.callbacks.step=5"])  # fmt: skip
    assert stop.value.code == 2
    message = capsys.readouterr().err.splitlines()[-1]
    match = re.fullmatch(
        r"mnist-rnn: error: the (loss became nan|weights stopped being finite numbers) in step (\d+) \(epoch 1\):"
        r" the learning rate \(model\.lr=0\.01\) is most likely too high; training stopped and the last good"
        r" checkpoint, (\S+), is kept\. Lower --model\.lr and start again",
        message,
    )
    assert match, message
    assert int(match[2]) == 6  # the poisoned step: 5 steps were done when the weight was set to inf
    kept = read_checkpoint(match[3])
    assert Path(match[3]) == LAST
    assert kept["global_step"] == int(match[2]) - 1  # the step before, saved when it was still sound
    weights = [t for name, t in kept["state_dict"].items() if name.startswith("net.")]
    assert all(torch.isfinite(t).all() for t in weights)


# A config of the user's own that names no run: quick, and with another model size than the default.
MINE = """
threads: 1
trainer: {max_epochs: 1, limit_train_batches: 5, limit_val_batches: 1}
model: {hidden_size: 32}
"""
PLAIN = ["fit", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1",
         "--threads", "1"]


@pytest.mark.parametrize("order", ["mine_first", "plain_first"])
def test_each_config_names_its_runs_and_last_resumes_its_own(tmp_path, monkeypatch, capsys, order):
    monkeypatch.chdir(tmp_path)
    Path("mine.yaml").write_text(MINE)
    commands = {"mine": ["fit", "-c", "mine.yaml"], "default": PLAIN}
    for name in (["mine", "default"] if order == "mine_first" else ["default", "mine"]):
        main(commands[name])
    assert sorted(os.listdir("runs")) == ["default", "mine"]  # runs/<the -c file's stem>/, plain fit runs/default/
    for name, command in commands.items():
        capsys.readouterr()
        main([*command, "--ckpt_path", "last"])
        assert f"resuming runs/{name}/version_0 from runs/{name}/version_0/checkpoints/last.ckpt" in capsys.readouterr().out


def test_last_refuses_a_run_made_with_other_settings_naming_both(tmp_path, monkeypatch, capsys):
    from tests.conftest import cli_error

    monkeypatch.chdir(tmp_path)
    Path("mine.yaml").write_text(MINE)
    main(PLAIN)
    message = cli_error(capsys, "fit", "-c", "mine.yaml", "--trainer.logger.init_args.name", "default", "--ckpt_path", "last")
    assert message == (
        "--ckpt_path last found runs/default/version_0, whose run has model.hidden_size 128 but this command sets 32;"
        " continue that run with its own config (mnist-rnn fit -c runs/default/version_0/config.yaml --ckpt_path last)"
        " or start a new run without --ckpt_path"
    )
    assert sorted(os.listdir("runs/default")) == ["version_0"]  # nothing was started


def test_a_fit_that_ends_before_its_first_validation_says_so_in_its_own_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:  # the filters the package set stay in force
        main(["fit", "-c", TINY, "--trainer.max_steps", "3"])
    assert not [str(w.message) for w in caught if "monitored key" in str(w.message)]
    out = capsys.readouterr().out
    assert f"best checkpoint: {LAST}  (the newest: no validation ran, so none was chosen on val/acc)\n" in out

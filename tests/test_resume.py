"""Resuming after a kill: the same run, carried on exactly."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_rnn.checkpoints import read_checkpoint
from mnist_rnn.cli import main
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
    fit = [sys.executable, "-m", "mnist_rnn.cli", "fit", "-c", TINY, "-c", str(config)]
    paced = fit + ["--trainer.callbacks+=tests.interrupts.Pace"]

    run = subprocess.Popen(paced, cwd=work, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (work / LAST).exists():
        assert run.poll() is None, "fit ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.01)
    run.kill()  # SIGKILL: no handler runs, nothing is saved on the way out
    run.wait()
    killed_at = read_checkpoint(work / LAST)
    assert killed_at["epoch"] == 0 and 0 < killed_at["global_step"] < 40, "the kill should land mid-epoch"

    resumed = subprocess.run(paced + ["--ckpt_path", "last"], cwd=work, env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming runs/tiny/version_0 from {LAST} (epoch 1, after step {killed_at['global_step']})" in resumed.stdout

    # One run, logged once per step from the first to the last: nothing repeated, nothing going back.
    assert sorted(p.name for p in (work / "runs" / "tiny").iterdir()) == ["version_0"]
    assert logged_steps(work / "runs" / "tiny" / "version_0") == list(range(80))
    final = read_checkpoint(work / LAST)
    assert (final["epoch"], final["global_step"]) == (1, 80)

    # The same run without the kill: identical weights mean the batches, dropout masks, optimizer,
    # schedule and best-metric state all carried on exactly.
    (tmp_path / "uninterrupted").mkdir()
    run_cli("fit", "-c", TINY, "-c", str(config), cwd=tmp_path / "uninterrupted")
    reference = read_checkpoint(tmp_path / "uninterrupted" / LAST)
    assert reference["global_step"] == 80
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name


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

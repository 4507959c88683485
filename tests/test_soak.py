"""The kill soak (issue 23): SIGKILL at random moments, resume with --ckpt_path last, end exactly as never killed.

The default-suite soak also kills and stops the run at the two moments the soak found inexact: a
checkpoint, or a stop on a signal, at a batch that Lightning validates after (resumed from it,
Lightning 2.6.6 skipped that validation: its val/* points and its say in the best checkpoint).
"""

import signal

import pytest

from tests.soak import Kill, soak


def test_a_fit_killed_and_stopped_at_chosen_and_random_moments_ends_as_the_uninterrupted_one(tmp_path):
    # 60 steps, a validation after every 15th, TimedCheckpoint due at every step.
    plan = [
        Kill("validation", 15, 0.0),  # SIGKILL as the validation after step 15 starts
        Kill("train", 29, 0.0, signal.SIGTERM),  # SIGTERM during step 30, the last batch of epoch 1
        None,  # SIGKILL at a random moment
    ]
    report = soak(tmp_path, kills=3, epochs=2, batches=30, interval="0:00:00", plan=plan)
    # The newest checkpoint before that validation is step 14's (step 15's was put off until after
    # it); the stop waited for epoch 1's validation and one more step.
    assert report.resumed_from[:2] == [14, 31], report.kills


def test_a_fit_killed_just_after_an_epochs_end_logs_that_end_once(tmp_path):
    # Found by the 20-kill soak (seed 71575): resumed from the checkpoint at an epoch's end, Lightning
    # runs that epoch's end again and logged train/acc at its last step a second time.
    report = soak(tmp_path, kills=1, epochs=2, batches=20, interval="0:00:00", plan=[Kill("train", 20, 0.0)])
    assert report.resumed_from == [20], report.kills  # the checkpoint at epoch 0's end


@pytest.mark.slow
def test_a_fit_killed_twenty_times_at_random_ends_as_the_uninterrupted_one(tmp_path):
    report = soak(tmp_path, kills=20, epochs=6, batches=50)  # 300 steps
    assert len(report.kills) == 20


@pytest.mark.slow
def test_a_two_process_ddp_fit_killed_five_times_at_random_ends_as_the_uninterrupted_one(tmp_path):
    # `python -m mnist_rnn` subprocesses; a kill takes the whole process group, both ranks.
    ddp = ("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "32")
    report = soak(tmp_path, kills=5, epochs=3, batches=30, extra=ddp, launcher="subprocess")
    assert len(report.kills) == 5

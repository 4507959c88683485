"""The kill soak (issue 23): SIGKILL at random moments, resume with --ckpt_path last, end exactly as never killed.

The default-suite soak also kills and stops the run at the moments the soak found inexact: a
checkpoint, or a stop on a signal, at a batch that Lightning validates after (resumed from it,
Lightning 2.6.6 skips that validation, and at an epoch's last batch that epoch's end:
resume.OwedValidation runs them), and a user's own ModelCheckpoint(every_n_train_steps=...) whose
saves land on epochs' ends (issue 28).
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
    # Step 15's checkpoint, written before its validation; the stop came right after step 30, before
    # epoch 1's validation: both resumed runs ran the validation owed first.
    assert report.resumed_from[:2] == [15, 30], report.kills


def test_a_fit_killed_as_the_validation_after_a_users_epoch_end_checkpoint_starts_ends_as_the_uninterrupted_one(tmp_path):
    # Issue 28's reproduction: a user's ModelCheckpoint(every_n_train_steps=40) saves at epoch 0's last
    # batch, before that epoch's validation, and the kill comes as the validation starts. On 1590f8b the
    # resumed run skipped the validation and the epoch's end, and ended with other weights.
    report = soak(tmp_path, kills=1, epochs=2, batches=40, interval=None, every_n_train_steps=40,
                  plan=[Kill("validation", 39, 0.0)], val_check_interval=1.0)  # fmt: skip
    assert report.resumed_from == [40], report.kills


def test_a_fit_killed_just_after_an_epochs_end_logs_that_end_once(tmp_path):
    # Found by the 20-kill soak (seed 71575): resumed from the checkpoint at an epoch's end, Lightning
    # runs that epoch's end again and logged train/acc at its last step a second time.
    report = soak(tmp_path, kills=1, epochs=2, batches=20, interval="0:00:00", plan=[Kill("train", 20, 0.0)])
    assert report.resumed_from == [20], report.kills  # the checkpoint at epoch 0's end


def test_a_fit_killed_between_the_files_of_its_last_save_ends_with_the_uninterrupted_last_ckpt(tmp_path):
    # Found by the 10-kill soak (seed 614281): the last validation's save writes the best checkpoint, then
    # last.ckpt; killed between the two, the run resumed from the best one, found nothing left to train and
    # ended with last.ckpt a validation behind (val_acc_best, the loop counters).
    report = soak(tmp_path, kills=1, epochs=2, batches=20, interval=None, val_check_interval=1.0,
                  plan=[Kill("save", 40, 0.0, entry=2)])  # fmt: skip
    assert report.resumed_from == [40], report.kills
    assert "newest checkpoint runs/soak/version_0/checkpoints/epoch01-" in report.kills[0], report.kills


@pytest.mark.slow
def test_a_fit_killed_twenty_times_at_random_ends_as_the_uninterrupted_one(tmp_path):
    report = soak(tmp_path, kills=20, epochs=6, batches=50)  # 300 steps
    assert len(report.kills) == 20


@pytest.mark.slow
def test_a_fit_with_a_users_step_checkpoint_on_epoch_ends_killed_ten_times_ends_as_the_uninterrupted_one(tmp_path):
    # A user's ModelCheckpoint(every_n_train_steps=25) beside the timed one: with 50 batches an epoch its saves
    # land on every epoch's last batch and half-way, both just before a validation (val_check_interval 0.5).
    report = soak(tmp_path, kills=10, epochs=4, batches=50, every_n_train_steps=25)
    assert len(report.kills) == 10


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # with test_distributed.py's: no two DDP runs at once (each picks a free port)
def test_a_two_process_ddp_fit_killed_five_times_at_random_ends_as_the_uninterrupted_one(tmp_path):
    # `python -m mnist_rnn` subprocesses; a kill takes the whole process group, both ranks.
    ddp = ("--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "32")
    report = soak(tmp_path, kills=5, epochs=3, batches=30, extra=ddp, launcher="subprocess")
    assert len(report.kills) == 5

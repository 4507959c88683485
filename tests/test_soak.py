"""The kill soak (issue 23): SIGKILL at random moments, resume with --ckpt_path last, end exactly as never killed."""

import pytest

from tests.soak import Kill, soak


def test_a_fit_killed_three_times_at_random_ends_as_the_uninterrupted_one(tmp_path):
    report = soak(tmp_path, kills=3)
    assert len(report.kills) == 3


def test_a_kill_as_validation_starts_after_a_timed_checkpoint_still_gets_that_validation(tmp_path):
    # TimedCheckpoint due at every step, the kill as the mid-epoch validation after step 10 starts.
    report = soak(tmp_path, kills=1, epochs=1, batches=20, interval="0:00:00", plan=[Kill("validation", 10, 0.0)])
    assert report.kills

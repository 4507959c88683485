"""Run folders: one per `fit`, even for runs started at the same moment."""

import re
import subprocess
import sys
from pathlib import Path

from mnist_rnn.run.checkpoints import read_checkpoint
from mnist_rnn.run.folders import RunLogger
from tests.conftest import TINY, cli_error, subprocess_env


def test_two_runs_started_together_get_their_own_folders(tmp_path):
    quick = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1"]
    runs = {
        hidden: subprocess.Popen(
            [sys.executable, "-m", "mnist_rnn", "fit", "-c", TINY, *quick, "--model.hidden_size", str(hidden)],
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for hidden in (8, 12)
    }
    folders = {}
    for hidden, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        folders[hidden] = tmp_path / re.search(r"^logs: (\S+)", out, re.MULTILINE)[1]
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["version_0", "version_1"]
    assert folders[8] != folders[12]
    # Each folder holds its own run's config and checkpoints, not the other's.
    for hidden, folder in folders.items():
        assert f"hidden_size: {hidden}\n" in (folder / "config.yaml").read_text()
        for ckpt in (folder / "checkpoints").glob("*.ckpt"):
            assert read_checkpoint(ckpt)["hyper_parameters"]["hidden_size"] == hidden


def test_a_version_taken_between_listing_and_claiming_is_skipped(tmp_path, monkeypatch):
    """The race itself: another run creates version_0 after this one listed the folder and saw none."""
    (tmp_path / "tiny" / "version_0").mkdir(parents=True)
    monkeypatch.setattr("lightning.pytorch.loggers.TensorBoardLogger._get_next_version", lambda self: 0)
    logger = RunLogger(save_dir=tmp_path, name="tiny")
    assert logger.version == 1
    assert (tmp_path / "tiny" / "version_1").is_dir()


def test_an_output_folder_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    # A file where a folder must go: refused for every user, root included (unlike a read-only folder).
    monkeypatch.chdir(tmp_path)
    Path("occupied").write_text("")
    message = cli_error(capsys, "fit", "-c", TINY, "--trainer.logger.init_args.save_dir", "occupied/runs")
    assert message == (
        "cannot create the run folder occupied/runs/tiny (Not a directory); choose a writable"
        " --trainer.logger.init_args.save_dir or fix the folder's permissions"
    )
    assert Path("occupied").read_text() == ""

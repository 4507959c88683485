"""The module paths of mnist-rnn 0.2 (one flat `mnist_rnn/`) still work after the move to sub-packages."""

import importlib
import subprocess
import sys
from pathlib import Path

from mnist_rnn.commands import dispatch
from mnist_rnn.data.datamodule import MNISTDataModule
from mnist_rnn.model.classifier import LSTMClassifier, RecurrentClassifier
from mnist_rnn.old_paths import MOVED
from mnist_rnn.run.checkpoints import SafeCheckpointIO, TimedCheckpoint
from mnist_rnn.run.folders import RunLogger
from mnist_rnn.run.resume import OwedValidation, RandomState
from mnist_rnn.run.stopping import StopOnNonFinite, StopOnSignal
from mnist_rnn.views.dashboards import TensorBoardDashboards
from mnist_rnn.views.recurrence import RecurrenceViews
from tests.conftest import run_cli, subprocess_env

# Every module of 0.2's flat package (`git ls-files 'mnist_rnn/*.py'` at 42488da), but its __init__ and __main__.
MODULES_0_2 = (
    "bundled checkpoints cli commands dashboards data errors export hardware images inference make_bundled mnist_files model"
    " network predictions progress recurrence_views resume runs serve steps_per_execution stopping sweep sweep_file"
    " trainer_settings unroll"
).split()
# A run's config.yaml as 0.2 saved it: `mnist-rnn fit -c conf/tiny.yaml` at 42488da.
SAVED_BY_0_2 = Path(__file__).parent / "fixtures" / "config_0.2.yaml"


def test_every_module_path_of_0_2_still_imports_as_the_module_it_became():
    for name in MODULES_0_2:
        module = importlib.import_module(f"mnist_rnn.{name}")
        new = MOVED.get(f"mnist_rnn.{name}")
        if new is not None:  # the same module object: a class named by either path is one class
            assert module is importlib.import_module(new), name
    assert importlib.import_module("mnist_rnn.commands").main is dispatch.main  # the entry point mnist_rnn.commands:main
    assert importlib.import_module("mnist_rnn.data").MNISTDataModule is MNISTDataModule
    model = importlib.import_module("mnist_rnn.model")
    assert (model.RecurrentClassifier, model.LSTMClassifier) == (RecurrentClassifier, LSTMClassifier)


def test_a_run_config_saved_by_0_2_fits_with_the_classes_it_names(tmp_path):
    assert "class_path: mnist_rnn.runs.RunLogger" in SAVED_BY_0_2.read_text()  # the fixture names the old paths
    cli, _ = run_cli(
        "fit", "-c", str(SAVED_BY_0_2), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", cwd=tmp_path,
    )  # fmt: skip
    trainer = cli.trainer
    assert isinstance(trainer.logger, RunLogger) and isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    kinds = {type(callback) for callback in trainer.callbacks}
    named = {TimedCheckpoint, TensorBoardDashboards, RecurrenceViews, RandomState, OwedValidation, StopOnNonFinite, StopOnSignal}
    assert named <= kinds
    assert trainer.global_step == 2 and (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_python_m_on_an_old_module_path_runs_the_moved_module():
    # The bundled checkpoint records the command that made it: `python -m mnist_rnn.make_bundled`.
    done = subprocess.run(
        [sys.executable, "-m", "mnist_rnn.make_bundled", "--help"], capture_output=True, text=True, env=subprocess_env(), timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--from" in done.stdout and "bundled" in done.stdout

"""The weight average (model.ema_decay, mnist_rnn/run/averaging.py): what validation, checkpoints and evaluation use."""

import re
from pathlib import Path

import lightning as L
import pytest
import torch

from mnist_rnn.model.classifier import RecurrentClassifier
from mnist_rnn.run.averaging import warmed_up_decay
from mnist_rnn.run.checkpoints import read_checkpoint, saved_settings
from tests.conftest import TINY, run_cli

FIXTURES = Path(__file__).parent / "fixtures"


def test_the_decay_warms_up_as_tensorflows_moving_average():
    assert warmed_up_decay(0.9995, 0) == pytest.approx(0.1)  # the second update: the average mostly follows
    assert warmed_up_decay(0.9995, 90) == pytest.approx(0.91)
    assert warmed_up_decay(0.9995, 3_000) == pytest.approx(3_001 / 3_010)  # a default run's end: about its last tenth
    assert warmed_up_decay(0.9995, 10**6) == 0.9995  # the cap


def test_a_fit_saves_the_average_for_evaluation_and_its_training_weights_for_resume(tiny_run):
    checkpoint = read_checkpoint(tiny_run["run_dir"] / "checkpoints" / "last.ckpt")
    averaged, training = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert checkpoint["hyper_parameters"]["ema_decay"] == 0.9995
    assert int(checkpoint["averaging_state"]["n_averaged"]) == checkpoint["global_step"]  # one update per step
    weights = [name for name in training if name.startswith("net.")]
    assert weights and all(not torch.equal(averaged[name], training[name]) for name in weights)
    # Only weights are averaged: the metrics' sums and the best accuracy so far are the run's own.
    assert all(torch.equal(averaged[name], training[name]) for name in training if not name.startswith("net."))
    # When fit ends the model holds the average (what its last validation scored).
    final = tiny_run["cli"].model.state_dict()
    assert all(torch.equal(final[name], averaged[name]) for name in weights)


class SaveAtBatchEnd(L.Callback):
    """A user's callback that saves a checkpoint at a batch's end, listed (as users list theirs) before the average."""

    def __init__(self, batch_idx: int, path: str) -> None:
        self.batch_idx, self.path = batch_idx, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)


def test_a_save_at_a_batch_end_holds_that_steps_update_of_the_average(tmp_path):
    path = tmp_path / "at_step_3.ckpt"
    run_cli("fit", "-c", TINY, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5",
            "--trainer.callbacks+=tests.test_averaging.SaveAtBatchEnd", "--trainer.callbacks.init_args.batch_idx=2",
            f"--trainer.callbacks.init_args.path={path}", cwd=tmp_path)  # fmt: skip
    checkpoint = read_checkpoint(path)
    assert checkpoint["global_step"] == 3
    # One update per optimizer step, the third included (before the fix: 2, and a resumed run never made it).
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 3
    assert checkpoint["callbacks"]["AveragedWeights"]["latest_update_step"] == 3


def test_validation_during_fit_scored_the_weights_the_best_checkpoint_holds(tiny_run, tmp_path):
    best = tiny_run["cwd"] / tiny_run["cli"].trainer.checkpoint_callback.best_model_path
    scored_in_fit = float(re.search(r"val_acc(\d\.\d{4})", best.name)[1])
    cli, _ = run_cli("validate", "-c", TINY, "--ckpt_path", str(best), cwd=tmp_path)
    assert round(float(cli.trainer.callback_metrics["val/acc"]), 4) == scored_in_fit


def test_test_and_validate_after_fit_in_the_same_process_score_the_checkpoints_average(tmp_path):
    """Lightning's idiom, `trainer.fit(...)` then `trainer.test(ckpt_path="best")` (the sweep does it): the average."""
    cli, _ = run_cli("fit", "-c", TINY, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "6", cwd=tmp_path)
    best = tmp_path / cli.trainer.checkpoint_callback.best_model_path
    scored_in_fit = float(re.search(r"val_acc(\d\.\d{4})", best.name)[1])
    validated = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=str(best), verbose=False)[0]
    assert round(validated["val/acc"], 4) == scored_in_fit
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(best), verbose=False)[0]["test/acc"]
    in_new_process, _ = run_cli("test", "-c", TINY, "--ckpt_path", str(best), cwd=tmp_path)
    assert tested == in_new_process.trainer.callback_metrics["test/acc"].item()


def test_a_checkpoint_from_before_the_average_resumes_without_one():
    checkpoint = torch.load(FIXTURES / "legacy_rows_lstm.ckpt", weights_only=False)
    assert "ema_decay" not in checkpoint["hyper_parameters"]
    settings = saved_settings(checkpoint, "legacy_rows_lstm.ckpt", RecurrentClassifier, ())
    assert settings["model"]["ema_decay"] is None


def test_only_fit_keeps_an_average():
    model = RecurrentClassifier(hidden_size=8)
    assert model.configure_callbacks() == []  # no Trainer
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    model.trainer = trainer
    trainer.state.fn = "fit"
    assert [type(c).__name__ for c in model.configure_callbacks()] == ["AveragedWeights"]
    trainer.state.fn = "test"
    assert model.configure_callbacks() == []
    assert RecurrentClassifier(hidden_size=8, ema_decay=None).configure_callbacks() == []

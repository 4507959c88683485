"""Callbacks that report on a run: progress on the terminal (and in logs), TensorBoard's
dashboards during fit, and the CSV that predict writes."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams as hparams_summaries
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_rnn.data import NO_LABEL
from mnist_rnn.errors import ConfigError, PredictOutputError
from mnist_rnn.figures import confusion_matrix_image, digit_grid, note_image
from mnist_rnn.model import NUM_CLASSES


class EpochLineProgressBar(ProgressBar):
    """One line per epoch, for output that is not a terminal (CI logs, `| tee`, nohup).

    tqdm's carriage-return redraws turn into one enormous line there; this prints
    the progress-bar metrics once per epoch instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_start = 0.0
        self._pending: Optional[tuple[int, int, float]] = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch starts without on_train_epoch_start.
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The module logs train/acc in its own on_train_epoch_end, which runs after the
        # callbacks' hook: print the line once that has happened (next epoch, or end of fit).
        self._pending = (trainer.current_epoch, trainer.global_step, time.perf_counter() - self._epoch_start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None or not self._enabled:
            return
        epoch, step, seconds = self._pending
        self._pending = None
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        print(f"epoch {epoch + 1}/{total}  step {step}  {shown}  ({seconds:.1f} s)", flush=True)


def default_progress_bar() -> ProgressBar:
    """A tqdm bar on a terminal, one line per epoch elsewhere."""
    if sys.stdout.isatty():
        # Redrawing every batch costs time at small batch sizes; 20 batches still looks live.
        return TQDMProgressBar(refresh_rate=20)
    return EpochLineProgressBar()


class TensorBoardDashboards(Callback):
    """What TensorBoard shows beyond the scalars: the HPARAMS table and two pictures per validation epoch.

    - HPARAMS: the model's and the data's settings, as given, against `val/acc_best`, logged once
      at the start of fit, so runs with different settings compare in one table.
    - IMAGES `val/confusion_matrix`: true class against predicted class on the validation set.
    - IMAGES `val/misclassified`: validation digits the model got wrong, captioned "true->pred".

    Does nothing without a TensorBoardLogger (validate, test and predict run without a logger).
    """

    def __init__(self, max_misclassified: int = 48, metric: str = "val/acc_best") -> None:
        """
        Args:
            max_misclassified: How many misclassified validation digits the grid shows (the first ones met).
            metric: The logged scalar the HPARAMS tab reports for each run.
        """
        super().__init__()
        if max_misclassified < 1:
            raise ConfigError(f"TensorBoardDashboards max_misclassified must be at least 1, got {max_misclassified}")
        self.max_misclassified = max_misclassified
        self.metric = metric
        self.confusion = MulticlassConfusionMatrix(NUM_CLASSES)
        self._wrong: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (images, labels, preds)
        self._wrong_count = 0
        # Seconds spent on the dashboards in each validation epoch: the price of the pictures.
        self.epoch_seconds: list[float] = []
        self._seconds = 0.0

    @staticmethod
    def _logger(trainer: L.Trainer) -> Optional[TensorBoardLogger]:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _active(self, trainer: L.Trainer) -> bool:
        return self._logger(trainer) is not None and not trainer.sanity_checking

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        params = dict(pl_module.hparams_initial)
        if trainer.datamodule is not None:
            params.update(trainer.datamodule.hparams_initial)
        # Without LightningCLI's bookkeeping entries (_instantiator, _class_path): they are no settings.
        params = {k: v for k, v in params.items() if not k.startswith("_")}
        # The three HPARAMS summaries, written without logger.log_hyperparams(params, metrics):
        # that would also log the metric's placeholder value as a first point of its scalar curve.
        # TensorBoard reads the metric's values from the scalar the model logs under that tag.
        # Lightning's own hyperparameter call logs nothing here, as the logger has
        # default_hp_metric false: this is the run's only HPARAMS entry.
        writer = logger.experiment._get_file_writer()  # as Lightning's TensorBoardLogger does
        for summary in hparams_summaries(params, {self.metric: 0.0}):
            writer.add_summary(summary)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        self.confusion = self.confusion.to(pl_module.device)
        self.confusion.reset()
        self._wrong, self._wrong_count, self._seconds = [], 0, 0.0

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active(trainer):
            return
        start = time.perf_counter()
        images, labels = batch
        preds = outputs["preds"]
        self.confusion.update(preds, labels)
        room = self.max_misclassified - self._wrong_count
        if room > 0:
            wrong = (preds != labels).nonzero().flatten()[:room]
            if len(wrong):
                self._wrong.append((images[wrong].cpu(), labels[wrong].cpu(), preds[wrong].cpu()))
                self._wrong_count += len(wrong)
        self._seconds += time.perf_counter() - start

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        start = time.perf_counter()
        matrix = self.confusion.compute()  # every rank takes part: it syncs across devices
        experiment = self._logger(trainer).experiment
        # The step Lightning logs this epoch's val/* scalars at (its own LearningRateMonitor reads it
        # too), so that the pictures line up with the curves; global_step is one further on here.
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        experiment.add_image("val/confusion_matrix", confusion_matrix_image(matrix), step)
        if self._wrong:
            images, labels, preds = (torch.cat(parts) for parts in zip(*self._wrong))
            captions = [f"{int(t)}->{int(p)}" for t, p in zip(labels, preds)]
            grid = digit_grid(images, captions)
        else:
            grid = note_image("no misclassified digits")
        experiment.add_image("val/misclassified", grid, step)
        self._wrong = []
        self.epoch_seconds.append(self._seconds + time.perf_counter() - start)


class PredictionCSVWriter(BasePredictionWriter):
    """Writes what predict found to a CSV, one row per image, and says where it is.

    Columns: path, prediction, confidence (the top probability), p0..p9, and label where the
    images have one (the official test set), in which case the printed summary gives the accuracy.
    """

    def __init__(self, output: Optional[str] = None) -> None:
        """
        Args:
            output: The CSV file to write (replaced if it exists). Default: a new file
                predictions/predictions_<N>.csv in the current folder, N the first number not
                taken, so that earlier predictions are never overwritten.
        """
        super().__init__(write_interval="batch")
        self.output = output
        self.path: Optional[Path] = None
        self._file = None
        self._csv = None
        self._rows = 0
        self._correct = 0
        self._labelled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict" or not trainer.is_global_zero:
            return
        if trainer.world_size > 1:
            raise ConfigError("predict writes a single CSV: run it on one device (--trainer.devices 1)")
        # Opened here, before predicting starts: a place that cannot be written fails at once.
        try:
            self.path, self._file = self._open()
        except OSError as err:
            where = self.output or "predictions/"
            raise PredictOutputError(
                f"cannot write predictions to {where} ({err.strerror or err}); choose another file with"
                " --predictions.output"
            ) from None
        self._csv = None
        self._rows = self._correct = 0

    def _open(self):
        if self.output is not None:
            path = Path(self.output).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return path, path.open("w", newline="")
        folder = Path("predictions")
        folder.mkdir(exist_ok=True)
        number = 0
        while True:
            path = folder / f"predictions_{number}.csv"
            try:
                return path, path.open("x", newline="")  # "x": never replace an earlier file
            except FileExistsError:
                number += 1

    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
        batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        if self._file is None:
            return
        probs = prediction["probs"].float().cpu()
        labels = prediction["labels"].cpu()
        names = trainer.predict_dataloaders.dataset.names
        if self._csv is None:
            # The first batch tells whether these images carry labels: the test set does, the user's do not.
            self._labelled = bool((labels != NO_LABEL).all())
            self._csv = csv.writer(self._file)
            header = ["path", "prediction", "confidence", *(f"p{k}" for k in range(probs.shape[1]))]
            self._csv.writerow(header + (["label"] if self._labelled else []))
        confidence, predicted = probs.max(dim=1)
        for i, index in enumerate(batch_indices):
            row = [names[index], int(predicted[i]), f"{float(confidence[i]):.4f}"]
            row += [f"{p:.4f}" for p in probs[i].tolist()]
            if self._labelled:
                row.append(int(labels[i]))
                self._correct += int(predicted[i] == labels[i])
            self._csv.writerow(row)
        self._rows += len(batch_indices)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is None:
            return
        self._close()
        lines = [f"predictions for {self._rows} images: {self.path}"]
        if self._labelled and self._rows:
            lines.append(f"accuracy: {self._correct / self._rows:.4f} ({self._correct}/{self._rows})")
        print("\n".join(lines), flush=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

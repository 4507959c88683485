"""`TensorBoardDashboards`, and where the views log: the run's TensorBoard logger and the step of its val/* scalars.

The pictures themselves are drawn in mnist_rnn/views/pictures.py."""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_rnn.errors import ConfigError
from mnist_rnn.model.network import NUM_CLASSES
from mnist_rnn.views.pictures import confusion_matrix_image, digit_grid, note_image

# CUSTOM SCALARS: training and validation on one chart each (a card of TIME SERIES or SCALARS draws one tag).
LAYOUT = {"train and validation": {"accuracy": ["Multiline", ["^(train|val)/acc$"]], "loss": ["Multiline", ["^(train|val)/loss$"]]}}


class TensorBoardDashboards(Callback):
    """What TensorBoard shows beyond the scalars' own cards: the HPARAMS table, two pictures per validation epoch,
    and the CUSTOM SCALARS charts (`LAYOUT`).

    HPARAMS: the model's and the data's settings against `val/acc_best`, so runs compare in one
    table. IMAGES `views/confusion_matrix` (true class against predicted) and `views/misclassified`
    (validation digits the model got wrong, captioned "true->pred"). Nothing without a TensorBoardLogger."""

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
        self._hparams_logged = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = tensorboard_logger(trainer)
        if logger is not None:  # again on a resumed run: TensorBoard shows a layout written twice once
            logger.experiment.add_custom_scalars(LAYOUT)

    def _active(self, trainer: L.Trainer) -> bool:
        return tensorboard_logger(trainer) is not None and not trainer.sanity_checking

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._hparams_logged = False  # before a resumed run's checkpoint says otherwise (load_state_dict)

    def state_dict(self) -> dict[str, Any]:
        # Once per run, not per process: a run resumed after its first validation has its entry.
        return {"hparams_logged": self._hparams_logged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._hparams_logged = bool(state_dict.get("hparams_logged", False))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # HPARAMS, once per run, at its first validation, at the step the metric was logged: the
        # value repeats a point of its curve (TensorBoard shows the curve's latest). Lightning's own
        # call at fit start logs nothing here: the logger has default_hp_metric false.
        logger = tensorboard_logger(trainer)
        value = trainer.callback_metrics.get(self.metric)
        if logger is None or trainer.sanity_checking or self._hparams_logged or value is None:
            return
        self._hparams_logged = True
        data = trainer.datamodule.hparams_initial if trainer.datamodule is not None else {}
        # Without LightningCLI's bookkeeping entries (_instantiator, _class_path): they are no settings.
        params = {k: v for k, v in {**pl_module.hparams_initial, **data}.items() if not k.startswith("_")}
        logger.log_hyperparams(params, {self.metric: float(value)}, step=val_step(trainer))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        self.confusion = self.confusion.to(pl_module.device)
        self.confusion.reset()
        self._wrong = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not self._active(trainer):
            return
        images, labels = batch
        preds = outputs["preds"]
        self.confusion.update(preds, labels)
        room = self.max_misclassified - sum(len(kept_labels) for _, kept_labels, _ in self._wrong)
        if room <= 0:  # the grid is full: no more nonzero() (a device sync on a GPU) for the rest of the epoch
            return
        wrong = (preds != labels).nonzero().flatten()[:room]
        if len(wrong):
            self._wrong.append((images[wrong].cpu(), labels[wrong].cpu(), preds[wrong].cpu()))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer):
            return
        matrix = self.confusion.compute()  # every rank takes part: it syncs across devices
        experiment = tensorboard_logger(trainer).experiment
        step = val_step(trainer)
        experiment.add_image("views/confusion_matrix", confusion_matrix_image(matrix), step)
        if self._wrong:
            images, labels, preds = (torch.cat(parts) for parts in zip(*self._wrong))
            captions = [f"{int(t)}->{int(p)}" for t, p in zip(labels, preds)]
            grid = digit_grid(images, captions)
        else:
            grid = note_image("no misclassified digits")
        experiment.add_image("views/misclassified", grid, step)
        self._wrong = []


def tensorboard_logger(trainer: L.Trainer) -> Optional[TensorBoardLogger]:
    """None without one: validate, test and predict run without a logger."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def val_step(trainer: L.Trainer) -> int:
    """The step Lightning logs an epoch's val/* scalars at (the last training batch's), for pictures to line up."""
    return max(trainer.global_step - 1, 0)

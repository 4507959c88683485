"""Stopping a run without losing finished work (`StopOnSignal`: Ctrl-C or SIGTERM) or saving a broken state
(`StopOnNonFinite`: a loss or weights no longer finite)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mnist_rnn.errors import TrainingDiverged, TrainingStopped
from mnist_rnn.run.folders import newest_in


def checkpoint_folder(trainer: L.Trainer) -> Path:
    """Where the run's checkpoints go."""
    callback = trainer.checkpoint_callback
    return Path(callback.dirpath) if callback is not None and callback.dirpath else Path(trainer.default_root_dir)


class StopOnSignal(Callback):
    """SIGINT (Ctrl-C) and SIGTERM: finish the batch, save last.ckpt, stop; under DDP every rank together.

    The stop is a `TrainingStopped`, to which the CLI adds the command that resumes. After every training batch
    each rank learns from rank 0 whether a stop was asked for (one small broadcast, only with several processes),
    so all save and stop after the same step; rank 0's word counts whether `kill` reached the launching process
    alone or Ctrl-C every process. A second signal stops at once; the newest checkpoint is still whole
    (`SafeCheckpointIO` writes atomically).

    This replaces Lightning's SIGTERM handling during training (lightning 2.6.6): its handler broadcasts from
    inside the signal handler, a collective that can meet another rank's gradient all-reduce instead of its own
    broadcast, and its stop raises where no checkpoint is saved.

    Args:
        filename: File in the run's checkpoints folder that a stop on a signal writes.
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        super().__init__()
        self.filename = filename
        self._signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Installed here, not in setup(): Lightning installs its own SIGTERM handler just before training, and this must follow.
        self._signum = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now
        self._signum = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        signum = trainer.strategy.broadcast(self._signum, src=0) if trainer.world_size > 1 else self._signum
        if signum is None:
            return  # a validation due after this batch is run on resume (resume.OwedValidation)
        path = checkpoint_folder(trainer) / self.filename
        trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; rank 0 writes
        raise TrainingStopped(
            f"stopped by {signal.Signals(signum).name} in epoch {trainer.current_epoch + 1},"
            f" after step {trainer.global_step}; saved {path}",
            signum,
            report=trainer.is_global_zero,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Restored before Lightning's teardown, which then puts back the handlers from before fit.
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)


class StopOnNonFinite(Callback):
    """A loss or weights that are no longer finite stop training before that state is saved.

    The stop is a `TrainingDiverged`. The loss is checked after every batch (before the checkpoint callbacks,
    which Lightning runs last), the weights only before a checkpoint is written: checking every weight every
    step would cost a tenth of a step at batch 10.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            raise self._diverged(trainer, pl_module, f"the loss became {float(loss):g}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Raised before the file is written: the previous checkpoint stays the newest one.
        weights_ok = torch.stack([torch.isfinite(p.detach()).all() for p in pl_module.parameters()]).all()
        if not bool(weights_ok):
            raise self._diverged(trainer, pl_module, "the weights stopped being finite numbers")

    def _diverged(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str) -> TrainingDiverged:
        lr = pl_module.hparams.get("lr")
        setting = f" (model.lr={lr:g})" if lr is not None else ""
        good = newest_in(checkpoint_folder(trainer))
        kept = f"the last good checkpoint, {good}, is kept" if good else "no checkpoint had been written yet"
        return TrainingDiverged(
            f"{what} in step {trainer.global_step} (epoch {trainer.current_epoch + 1}): the learning rate{setting}"
            f" is most likely too high; training stopped and {kept}. Lower --model.lr and start again"
        )

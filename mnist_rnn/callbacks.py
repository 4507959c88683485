"""Callbacks that report on a run: progress on the terminal (and in logs)."""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar


class EpochLineProgressBar(ProgressBar):
    """One line per epoch, for output that is not a terminal (CI logs, `| tee`, nohup).

    tqdm's carriage-return redraws turn into one enormous line there; this prints
    the progress-bar metrics once per epoch instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_start = 0.0

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
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled:
            return
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        seconds = time.perf_counter() - self._epoch_start
        print(
            f"epoch {trainer.current_epoch + 1}/{total}  step {trainer.global_step}  {shown}  ({seconds:.1f} s)",
            flush=True,
        )


def default_progress_bar() -> ProgressBar:
    """A tqdm bar on a terminal, one line per epoch elsewhere."""
    if sys.stdout.isatty():
        # Redrawing every batch costs time at small batch sizes; 20 batches still looks live.
        return TQDMProgressBar(refresh_rate=20)
    return EpochLineProgressBar()

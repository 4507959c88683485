"""Callbacks that let tests interrupt a run where they choose (added with --trainer.callbacks+=...)."""

from __future__ import annotations

import time

import lightning as L


class Pace(L.Callback):
    """Slows every training batch down, so that a kill from outside lands in the middle of an epoch."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)

"""Callbacks that let tests interrupt a run where they choose (added with --trainer.callbacks+=...)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch


class Pace(L.Callback):
    """Slows every training batch down, so that a kill from outside lands in the middle of an epoch."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class SendSignal(L.Callback):
    """Sends a signal to this very process when training reaches a step, as Ctrl-C or `kill` would."""

    def __init__(self, step: int = 5, signum: int = int(signal.SIGTERM)) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class RecordStop(L.Callback):
    """Announces (a file) when training reaches a step, and records the step each rank stopped at."""

    def __init__(self, folder: str, announce_step: int = 5) -> None:
        self.folder = Path(folder)
        self.announce_step = announce_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.announce_step and trainer.global_rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "announced").touch()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}").write_text(str(trainer.global_step))


class PoisonWeights(L.Callback):
    """Sets one weight to inf when training reaches a step: a divergence in every precision and on every CPU."""

    def __init__(self, step: int = 5) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("inf")

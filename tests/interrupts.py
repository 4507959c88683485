"""Callbacks that let tests interrupt a run where they choose (added with --trainer.callbacks+=...)."""

from __future__ import annotations

import os
import signal
import threading
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
    """Sends a signal to this very process when training reaches a step, as Ctrl-C or `kill` would.

    Under DDP only rank 0 sends it: the launching process, where `kill PID` or Ctrl-C lands. Python runs the
    handler before the next line, so the moment is deterministic: the batch of that step is under way."""

    def __init__(self, step: int = 5, signum: int = int(signal.SIGTERM)) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), self.signum)


class RecordStop(L.Callback):
    """Records (a file per rank in folder) the step each rank stopped at."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

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


class KillAt(L.Callback):
    """SIGKILLs (or sends `signum` to) this run `delay` seconds after it enters a phase at or after a training step.

    phase: "train" (a training batch starts), "validation" (a validation starts; the sanity check
    aside) or "save" (a checkpoint is being assembled; the write follows at once), at global_step
    >= step, the `entry`-th time it does so (entry 2 of "save": the second file of a save, once the
    first is written); "anytime": the soak kills the run from outside; "never": no kill. The kill
    comes from a timer thread, as `kill -9` from outside would, so that it lands a chosen few
    milliseconds into the phase; with delay 0, at once, from the hook itself. A kill that has not
    landed by the end of fit (its phase never came, or came too late for the delay) lands then;
    with before_last_saves, already as the run's last validation ends, before the checkpoints
    written after it, so that the next attempt still has a run to resume (soak seed 891625).
    group: kill the whole process group (every DDP rank; the soak starts each run in a session of
    its own). Only rank 0 kills. Also records, in `folder`, the wall time of the start of training
    (for the soak's timing of kills from outside).
    """

    PHASES = ("train", "validation", "save", "anytime", "never")

    def __init__(
        self, folder: str, phase: str = "never", step: int = 0, delay: float = 0.0, group: bool = False,
        signum: int = int(signal.SIGKILL), entry: int = 1, before_last_saves: bool = False,
    ) -> None:  # fmt: skip
        if phase not in self.PHASES:
            raise ValueError(f"phase must be one of {self.PHASES}, got {phase!r}")
        self.folder = Path(folder)
        self.phase, self.step, self.delay, self.group, self.signum, self.entry = phase, step, delay, group, signum, entry
        self.before_last_saves = before_last_saves
        self._entries = 0
        self._armed = False
        self._sent = threading.Lock()  # held once the signal is sent: one signal, from the timer or the last validation

    def _enter(self, trainer, phase: str) -> None:
        if self._armed or phase != self.phase or trainer.global_step < self.step or trainer.global_rank != 0:
            return
        self._entries += 1
        if self._entries < self.entry:
            return
        self._armed = True
        if self.delay == 0:
            self._kill()
            return
        self._killer = threading.Thread(target=self._kill, args=(self.delay,), daemon=True)
        self._killer.start()

    def _kill(self, delay: float = 0.0) -> None:
        time.sleep(delay)
        if not self._sent.acquire(blocking=False):
            return
        if self.group and self.signum == signal.SIGKILL:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), self.signum)  # another signal goes to the launching process only, as `kill` does

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "train_start").write_text(repr(time.time()))

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            (self.folder / "train_end").write_text(repr(time.time()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._enter(trainer, "train")

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._enter(trainer, "validation")

    def _due(self, trainer) -> bool:
        return self.phase != "never" and trainer.global_step >= self.step and trainer.global_rank == 0

    def on_validation_end(self, trainer, pl_module) -> None:
        # Callbacks' hooks run before every ModelCheckpoint's (Lightning orders those last), so this precedes the saves.
        last = trainer.global_step >= trainer.max_epochs * trainer.num_training_batches
        if self.before_last_saves and last and not trainer.sanity_checking and self._due(trainer):
            self._kill()

    def teardown(self, trainer, pl_module, stage) -> None:
        if self._due(trainer):
            self._kill()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._enter(trainer, "save")


class SignalLauncher(L.Callback):
    """Sends a signal to this process's parent, its launcher (torchrun's agent), when training reaches a step:
    every rank to its own node's launcher, as a cluster scheduler stopping a job signals each node's."""

    def __init__(self, step: int = 5, signum: int = int(signal.SIGTERM)) -> None:
        self.step = step
        self.signum = signum
        self._sent = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self._sent:
            self._sent = True
            os.kill(os.getppid(), self.signum)

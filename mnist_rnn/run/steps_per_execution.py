"""Several optimizer steps per Lightning step (`model.steps_per_execution`, Keras's name): all of it.

Lightning pays a fixed cost for every step of its loop (hooks, logging, progress), which dominates
at batch 10 (docs/speed.md). With K > 1 the training loader serves K batches as one list and the
model takes one optimizer step on each (manual optimization), every count kept in optimizer steps:
training is the same, step for step, as with K = 1. The two private Lightning members this project
still needs are used here only (lightning 2.6.6, docs/layout.md; tests/test_steps_per_execution.py
fails if they change).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Iterator, Optional

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

from mnist_rnn.errors import ConfigError

# Lightning's hooks around each backward pass and optimizer step.
PER_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def check_settings(k: int, gradient_clip_val: Optional[float] = None, ema_decay: Optional[float] = None) -> None:
    """The combinations refused before anything is built (K itself is at least 1 by its type: run/ranges.py)."""
    if k > 1 and gradient_clip_val:
        raise ConfigError(
            f"model.steps_per_execution {k} cannot be combined with trainer.gradient_clip_val {gradient_clip_val}"
            " (Lightning clips only under one step per batch); pass --trainer.gradient_clip_val null or"
            " --model.steps_per_execution 1"
        )
    if k > 1 and ema_decay is not None:
        raise ConfigError(
            f"model.steps_per_execution {k} cannot be combined with model.ema_decay {ema_decay}"
            " (Lightning updates the weight average once per Lightning step, not per optimizer step); pass"
            " --model.ema_decay null or --model.steps_per_execution 1"
        )


def group(batches: Iterable, k: int) -> Iterator:
    """The training loader's batches, K to a list (the epoch's last list may hold fewer); as they are for K = 1."""
    if k == 1:
        yield from batches
        return
    iterator = iter(batches)
    while chunk := list(itertools.islice(iterator, k)):
        yield chunk


def lightning_steps(batches: int, k: int) -> int:
    """The lists (Lightning steps) an epoch of `batches` batches is served in."""
    return -(-batches // k)


def count_logger_steps(trainer: L.Trainer, extra: int) -> None:
    """Add a Lightning step's optimizer steps beyond one to the loggers' step (every curve's x axis).

    Private: lightning 2.6.6 counts `fit_loop.epoch_loop._batches_that_stepped` once per Lightning
    step (after on_train_batch_end) for every logged metric's step, LearningRateMonitor's and
    log_every_n_steps. Added before the step's hooks run, metrics logged at its end land on its last
    optimizer step, as with K = 1 (the learning rate, read at the step's start, is its first step's).
    """
    trainer.fit_loop.epoch_loop._batches_that_stepped += extra


def per_step_hooks_do_nothing(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """True when neither a callback nor the module overrides a per-step hook and the precision adds
    nothing to backward or step (no gradient scaler): a plain backward() and step() are then the same."""
    if str(trainer.precision) not in ("32-true", "bf16-mixed"):
        return False
    overridden = [is_overridden(hook, callback, L.Callback) for callback in trainer.callbacks for hook in PER_STEP_HOOKS]
    overridden += [is_overridden(hook, module, L.LightningModule) for hook in PER_STEP_HOOKS]
    return not any(overridden)


def validate_in_optimizer_steps(trainer: L.Trainer, k: int, batches_per_epoch: int) -> None:
    """Check that K divides every count kept in optimizer steps; make an integer val_check_interval count them.

    Lightning counts it in Lightning steps (trainer.val_check_batch, set by its fit loop from
    val_check_interval before on_train_start, lightning 2.6.6; same guard test as above).
    """
    if trainer.world_size > 1:
        # DDP reduces gradients once per forward of its wrapper, which is one per Lightning step.
        raise ConfigError(
            f"model.steps_per_execution {k} runs in one process only (this run has {trainer.world_size});"
            " use --model.steps_per_execution 1 with several devices"
        )
    counts = {"trainer.log_every_n_steps": trainer.log_every_n_steps, "training batches per epoch": batches_per_epoch}
    if isinstance(trainer.val_check_interval, int):
        counts["trainer.val_check_interval"] = trainer.val_check_interval
    if any(n % k for n in counts.values()):
        common = math.gcd(*counts.values())
        fits = [d for d in range(2, common + 1) if common % d == 0][:6]
        advice = f"use one that divides them all ({', '.join(map(str, fits))})" if fits else "use 1"
        raise ConfigError(
            f"model.steps_per_execution {k} must divide "
            + ", ".join(f"{name} ({n})" for name, n in counts.items())
            + f"; {advice}"
        )
    if isinstance(trainer.val_check_interval, int):
        trainer.val_check_batch = trainer.val_check_interval // k


class StepsPerExecution:
    """The model's side: K optimizer steps per Lightning step, counted as K = 1 counts them."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.plain = False  # a bare backward() and step() where no hook would see them (start())

    @property
    def several(self) -> bool:
        return self.k > 1

    def batches_per_epoch(self, trainer: L.Trainer) -> int:
        """Training batches (optimizer steps) per epoch, after limit_train_batches."""
        served = getattr(trainer.train_dataloader, "batches_per_epoch", None)
        steps = trainer.num_training_batches  # Lightning steps
        return steps if served is None else min(served, steps * self.k)

    def optimizer_steps(self, trainer: L.Trainer) -> float:
        """The run's optimizer steps, as `trainer.estimated_stepping_batches` counts them for K = 1."""
        steps = trainer.estimated_stepping_batches  # Lightning steps; also sets up the training loader
        if not self.several or trainer.max_epochs == -1:
            return steps
        total = self.batches_per_epoch(trainer) * max(trainer.max_epochs, 1)
        return min(total, trainer.max_steps) if trainer.max_steps != -1 else total

    def start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """At the start of training: the counts checked, and the plain step chosen where it is safe."""
        if self.several:
            validate_in_optimizer_steps(trainer, self.k, self.batches_per_epoch(trainer))
            self.plain = per_step_hooks_do_nothing(trainer, module)

    def before_batch(self, trainer: Optional[L.Trainer], batch: Any) -> None:
        # Before the Lightning step's first hook (on_train_batch_start, where LearningRateMonitor
        # looks), so that every hook of the step sees the loggers' step after its last optimizer step.
        if self.several and trainer is not None and trainer.training and isinstance(batch, list):
            count_logger_steps(trainer, len(batch) - 1)

    def train(self, module: L.LightningModule, batches: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step per batch of the list, as K = 1 takes them: the losses (detached), predictions, labels."""
        if not isinstance(batches, list):
            raise ConfigError(
                f"model.steps_per_execution is {self.k} but the training data comes one"
                " batch at a time; give the datamodule the same steps_per_execution"
            )
        optimizer, scheduler = module.optimizers(), module.lr_schedulers()
        max_steps = module.trainer.max_steps
        losses, all_preds, all_labels = [], [], []
        for batch in batches:
            if 0 <= max_steps <= module.global_step:
                break  # max_steps counts optimizer steps, so the last list may end early
            loss, preds, labels = module.model_step(batch)
            if self.plain:
                # What manual_backward and optimizer.step() come to here, without dispatching hooks
                # that nothing overrides (about a sixth of a batch-10 step). The step is counted as
                # Lightning's own wrapper counts it (private, lightning 2.6.6: the manual loop's
                # progress callbacks; tests/test_steps_per_execution.py checks global_step).
                optimizer.optimizer.zero_grad()
                loss.backward()
                optimizer._on_before_step()
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                optimizer.zero_grad()
                module.manual_backward(loss)
                optimizer.step()  # Lightning's wrapper: global_step counts this step
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
            all_preds.append(preds)
            all_labels.append(labels)
        count_logger_steps(module.trainer, len(losses) - len(batches))  # steps counted but not taken (max_steps)
        return torch.stack(losses), torch.cat(all_preds), torch.cat(all_labels)

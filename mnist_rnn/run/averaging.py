"""The weights a run evaluates and saves: a moving average of its training weights (`model.ema_decay`).

Lightning's `WeightAveraging` callback does all the keeping (lightning 2.6): it holds a
`torch.optim.swa_utils.AveragedModel`, updates it after every optimizer step, swaps it in for each
validation (so `val/acc`, the views and the best checkpoint are the average's), writes it as the
checkpoint's `state_dict` (the training weights go to `current_model_state`, the average's count to
`averaging_state`), restores both on resume, and leaves the average in the model when fit ends. So
`test`, `predict`, `serve`, `export`, `load_model` and the bundled model read the averaged weights from
any checkpoint without knowing of it.

What is ours is the decay, warmed up as TensorFlow's `ExponentialMovingAverage(decay, num_updates)`:
after n updates it is min(decay, (1 + n) / (10 + n)), so the average follows the weights closely at
first and spans about the last tenth of a run of any length. A fixed decay of 0.999 would still hold
65% of the first step's weights after a one-epoch run of 429 steps (docs/speed.md, issue 32).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import get_ema_multi_avg_fn

WARMUP = 10  # TensorFlow's: (1 + n) / (10 + n)


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay of the update that follows `updates` earlier ones."""
    return min(decay, (1 + updates) / (WARMUP + updates))


def warmed_up_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """An `AveragedModel` multi_avg_fn: torch's own EMA step (one foreach lerp), at the warmed-up decay."""

    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        # The average keeps the dtype the model had when fit set up (float32): under bf16-true the weights train in
        # bfloat16, whose 8-bit mantissa would round a step of (1 - decay) away.
        current = [c.to(a.dtype) for a, c in zip(averaged, current)]
        get_ema_multi_avg_fn(warmed_up_decay(decay, int(updates)))(averaged, current, updates)

    return average


class AveragedWeights(WeightAveraging):
    """Lightning's weight averaging with the warmed-up exponential moving average above.

    Lightning updates the average once per Lightning step, so model.steps_per_execution > 1 is refused with it
    (run/steps_per_execution.py).
    """

    def __init__(self, decay: float) -> None:
        super().__init__(use_buffers=True, multi_avg_fn=warmed_up_ema(decay))
        self.decay = decay

    # Lightning keeps a model's callbacks attached after fit, so `trainer.test(ckpt_path="best")` or `validate` in the
    # same process still meets this one: there it must leave the checkpoint's weights (its average) alone, not load
    # the training weights over them on load, nor swap in the fit's last average for validation.
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A callback ahead of this one that saves at a batch's end (StopOnSignal, a user's) would otherwise save the
        # average without that step's update, and a run resumed from it would never make it. The update is made
        # now instead: the parent's own hook, which does nothing where the step was counted already.
        if trainer.training:
            super().on_train_batch_end(trainer, pl_module, None, None, 0)
            if self.state_key in checkpoint.get("callbacks", {}):  # written before this hook: the count as it is now
                checkpoint["callbacks"][self.state_key] = self.state_dict()
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if "current_model_state" not in checkpoint:
            return
        # Only weights are averaged: the rest of the state (the metrics' sums, the best validation accuracy so far)
        # is the run's own, not the copy the average was made from when fit set up.
        averaged = {name for name, _ in itertools.chain(pl_module.named_parameters(), pl_module.named_buffers())}
        for name, value in checkpoint["current_model_state"].items():
            if name not in averaged:
                checkpoint["state_dict"][name] = value

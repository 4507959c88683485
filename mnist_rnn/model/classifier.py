"""The training logic: steps, metrics, optimizers and schedules around `mnist_rnn.model.network.RecurrentNet`.

Its settings are saved with every checkpoint (`save_hyperparameters`), so a checkpoint alone
rebuilds the same network, reads images the same way and keeps the same permutation.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Optional

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import OpenUnitInterval, PositiveInt
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_rnn.errors import ConfigError
from mnist_rnn.model.network import IMAGE_SIDE, NUM_CLASSES, RecurrentNet, pixel_permutation  # noqa: F401 (re-exported)
from mnist_rnn.model.optimization import OPTIMIZERS, SCHEDULERS, clip_for_fused_step, gradient_scaler  # noqa: F401 (re-exported)
from mnist_rnn.run import ranges
from mnist_rnn.run.averaging import AveragedWeights
from mnist_rnn.run.checkpoints import upgraded_key
from mnist_rnn.run.ranges import FLOAT32_MAX, DropoutRate, NonNegativeFloat32, PositiveFloat32  # noqa: F401 (FLOAT32_MAX: re-exported)
from mnist_rnn.run.resume import check_schedule_length
from mnist_rnn.run.steps_per_execution import StepsPerExecution, check_settings


class RecurrentClassifier(L.LightningModule):
    """Trains `RecurrentNet` (an LSTM or GRU reading an image as a sequence) to classify digits."""

    # Settings that checkpoints of earlier versions lack, with the value they were trained with (run/checkpoints.py).
    ABSENT_FROM_OLDER_CHECKPOINTS = {"ema_decay": None}

    def __init__(
        self,
        hidden_size: PositiveInt = 128,
        num_layers: PositiveInt = 1,
        dropout: DropoutRate = 0.0,
        bidirectional: bool = False,
        cell: Literal["lstm", "gru"] = "lstm",
        sequence: Literal["rows", "pixels", "permuted"] = "rows",
        permutation_seed: int = 0,
        forget_bias: float = 1.0,
        recurrent_init: Literal["default", "orthogonal", "identity"] = "default",
        optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam",
        lr: PositiveFloat32 = 3e-3,
        weight_decay: NonNegativeFloat32 = 0.0,
        scheduler: Literal["none", "onecycle", "cosine"] = "onecycle",
        warmup_pct: OpenUnitInterval = 0.3,
        ema_decay: Optional[OpenUnitInterval] = 0.9995,
        steps_per_execution: PositiveInt = 1,
    ) -> None:
        """
        Args:
            hidden_size: Units in each recurrent layer (and direction).
            num_layers: Stacked recurrent layers.
            dropout: Dropout between stacked layers (ignored with one layer); in [0, 1).
            bidirectional: Also read the sequence backwards; the head then sees both directions'
                final states.
            cell: lstm or gru.
            sequence: How an image becomes a sequence: rows (28 steps of 28 pixels), pixels
                (sequential MNIST: 784 steps of 1 pixel) or permuted (the 784 pixels in one fixed
                random order, drawn from permutation_seed).
            permutation_seed: Seed of the pixel order for sequence=permuted.
            forget_bias: Initial LSTM forget-gate bias. 1.0 helps the LSTM keep information from
                early steps. Ignored for gru.
            recurrent_init: Hidden-to-hidden weights: default (PyTorch's uniform), orthogonal, or
                identity (each gate's block an identity matrix).
            optimizer: adam, adamw, sgd (with Nesterov momentum 0.9) or rmsprop (smoothing 0.9,
                as in the sequential-MNIST papers).
            lr: Learning rate; with a schedule, its peak.
            weight_decay: L2 penalty (decoupled for adamw).
            scheduler: none (constant lr), onecycle (warm up to lr, then anneal) or cosine (anneal
                from lr to 0), stepped every batch over the whole run.
            warmup_pct: Fraction of the run spent warming up, for onecycle.
            ema_decay: Evaluate and save an exponential moving average of the weights, updated after
                every optimizer step with decay min(ema_decay, (1 + n) / (10 + n)) after n updates
                (TensorFlow's warm-up), so it spans about the last tenth of the run; validation, the
                best checkpoint, test, predict and export use the average (mnist_rnn/run/averaging.py).
                null: the training weights themselves.
            steps_per_execution: Optimizer steps per Lightning step (Keras's steps_per_execution): the
                data module serves this many batches at once and the model takes one optimizer step
                on each, so training is the same, step for step, while Lightning's per-step work is
                paid once per this many steps (it dominates at small batches: see docs/speed.md).
                It must divide trainer.log_every_n_steps, an integer trainer.val_check_interval (both
                still count optimizer steps, as do max_steps and global_step) and the batches of an
                epoch. Not with trainer.gradient_clip_val (Lightning clips only one step per batch).
        """
        super().__init__()
        # The ranges and choices are the annotations' (run/ranges.py), which LightningCLI's parser checks; from Python and
        # load_from_checkpoint, this does, one setting at a time, so the first wrong one is named.
        ranges.check(RecurrentClassifier.__init__, locals(), "model")
        check_settings(steps_per_execution, ema_decay=ema_decay)
        if sequence == "permuted" and permutation_seed < 0:  # a cross-field check: the seed is used only then
            raise ConfigError(f"model.permutation_seed must not be negative, got {permutation_seed}")
        # Plain numbers before save_hyperparameters reads them (load_from_checkpoint passes jsonargparse's).
        hidden_size, num_layers, dropout, lr, weight_decay, warmup_pct, ema_decay, steps_per_execution = ranges.plain(
            hidden_size, num_layers, dropout, lr, weight_decay, warmup_pct, ema_decay, steps_per_execution
        )
        self.steps_per_execution = StepsPerExecution(steps_per_execution)
        self.save_hyperparameters()
        # Several optimizer steps per Lightning step need manual optimization (training_step steps).
        self.automatic_optimization = not self.steps_per_execution.several
        # The network's own settings, the model's first nine (docs/layout.md says why they are declared twice).
        self.net = RecurrentNet(
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout,
            bidirectional=bidirectional,
            cell=cell,
            sequence=sequence,
            permutation_seed=permutation_seed,
            forget_bias=forget_bias,
            recurrent_init=recurrent_init,
        )
        # Checkpoints of the earlier layout load too, through every path (Trainer, load_from_checkpoint).
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys)
        # One metric object per stage, so their states never mix. validate_args=False on the
        # training metric: its input checks cost more than the update itself at small batches.
        self.train_acc = MulticlassAccuracy(NUM_CLASSES, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.val_acc_best = MaxMetric()
        # Saved in checkpoints, so a resumed run keeps its best validation accuracy, and the
        # accuracy over the part of an epoch done before a mid-epoch stop.
        self.val_acc_best.persistent(True)
        self.train_acc.persistent(True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (batch, 10) for normalized images (batch, 28, 28)."""
        return self.net(images)

    def per_step_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (batch, steps, 10) after every time step: see `RecurrentNet.per_step_logits`."""
        return self.net.per_step_logits(images)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]):
        """The work shared by training, validation and test: logits, loss and predictions."""
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, logits.argmax(dim=1), labels

    def on_train_epoch_start(self) -> None:
        # The one place the epoch's accuracy starts afresh. A checkpoint taken at an epoch's end
        # still holds that epoch's sums (the checkpoint callbacks run before on_train_epoch_end
        # below), so a run resumed from it must not count them again. Resuming mid-epoch skips
        # this hook and keeps the sums, as it should.
        self.train_acc.reset()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            loss, preds, labels = self.model_step(batch)
            logged, steps_taken = loss, self.global_step + 1  # Lightning counts this step after training_step
        else:
            # One optimizer step per batch of the list (steps_per_execution.py), each already counted.
            losses, preds, labels = self.steps_per_execution.train(self, batch)
            logged, steps_taken = losses[-1], self.global_step
            loss = losses.mean()  # non-finite if any step's loss was (StopOnNonFinite reads it)
        # Accuracy over the epoch's batches (logged in on_train_epoch_end): a single batch's
        # accuracy, the notebook's "minibatch accuracy", is too noisy to read at small batches.
        self.train_acc.update(preds, labels)
        # self.log costs about as much as a whole training step at batch 10 (Lightning re-homes
        # its result store on every call), so the loss is logged only on the steps the logger
        # writes: the same points on the dashboard, a fraction of the cost.
        if steps_taken % max(self.trainer.log_every_n_steps, 1) == 0:
            self.log("train/loss", logged, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        self.steps_per_execution.before_batch(self.attached_trainer(), batch)
        return batch

    def on_train_epoch_end(self) -> None:
        # compute() already gathers all ranks; sync_dist only averages equal values (and tells Lightning so).
        with warnings.catch_warnings():
            # Resumed at this epoch's last batch (resume.OwedValidation), the sums came with the checkpoint
            # (persistent) and no update has run since: torchmetrics would warn that nothing was counted.
            warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric .* before the ``update``")
            self.log("train/acc", self.train_acc.compute(), prog_bar=True, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds, labels = self.model_step(batch)
        self.val_acc(preds, labels)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)
        # For callbacks (the TensorBoard dashboards), which see the batch but not the predictions.
        return {"preds": preds}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # the sanity check's two batches must not count as a best epoch
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, preds, labels = self.model_step(batch)
        self.test_acc(preds, labels)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(labels), sync_dist=True)
        self.log("test/acc", self.test_acc, on_epoch=True)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        return {"probs": self(images).float().softmax(dim=1), "labels": labels}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The precision the weights were trained in: test, validate, predict and a resumed fit use it.
        trainer = self.attached_trainer()
        if trainer is not None:
            checkpoint["precision"] = str(trainer.precision)

    def attached_trainer(self) -> "L.Trainer | None":
        """The Trainer, or None (`self.trainer` raises where none is attached: strategy.connect alone)."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    def on_train_start(self) -> None:
        check_schedule_length(self.trainer, self.hparams.scheduler, self.optimizer_steps())
        self.steps_per_execution.start(self.trainer, self)

    def optimizer_steps(self) -> float:
        """The run's optimizer steps (the schedule's length), whatever steps_per_execution is."""
        return self.steps_per_execution.optimizer_steps(self.trainer)

    def configure_callbacks(self) -> list[L.Callback]:
        # The weight average belongs to the recipe, so the model brings it (Lightning's hook for model-specific
        # callbacks); only fit keeps one: evaluating a checkpoint reads the average saved in it.
        trainer = self.attached_trainer()
        if self.hparams.get("ema_decay") is None or trainer is None or trainer.state.fn != "fit":
            return []
        return [AveragedWeights(self.hparams.ema_decay)]

    def configure_optimizers(self):
        hp = self.hparams
        # Fused Adam updates all parameters in one kernel instead of a handful of ops per tensor (docs/speed.md).
        # Only a gradient scaler (16-mixed) needs the foreach kind when clipping: it must unscale before clipping.
        trainer = self.attached_trainer()
        foreach = bool(trainer is not None and trainer.gradient_clip_val and gradient_scaler(trainer) is not None)
        optimizer = OPTIMIZERS[hp.optimizer](self.parameters(), hp.lr, hp.weight_decay, foreach)
        if hp.scheduler == "none":  # a schedule that keeps lr as it is (x 1.0), so that its curve is named as the others'
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        else:
            scheduler = SCHEDULERS[hp.scheduler](optimizer, hp.lr, int(self.optimizer_steps()), hp.warmup_pct)
        # LearningRateMonitor names the curve after the schedule (else lr-Adam): train/lr, in TensorBoard's train group.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for any fused optimizer (fused steps unscale a gradient
        # scaler's gradients themselves); bf16-mixed has none, so its gradients are clipped here (optimization.py).
        if not clip_for_fused_step(self.trainer, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def _upgrade_legacy_keys(module, state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        upgraded = prefix + upgraded_key(key[len(prefix) :])
        if upgraded != key:
            state_dict[upgraded] = state_dict.pop(key)


# The name this class had before GRUs joined it: configs, code and checkpoints that use it keep working.
LSTMClassifier = RecurrentClassifier

"""The classifier: an LSTM (or GRU) reads an image as a sequence, a linear head reads its final state.

The model owns the image-to-sequence step (rows, pixels or permuted pixels), so a checkpoint
alone says how to read an image: test, predict on files and resume all use the same sequence
and the same permutation, which is kept in the checkpoint.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_rnn.errors import ConfigError

NUM_CLASSES = 10
IMAGE_SIDE = 28


def pixel_permutation(seed: int) -> torch.Tensor:
    """The fixed pixel order of permuted sequential MNIST, drawn reproducibly from seed."""
    return torch.randperm(IMAGE_SIDE * IMAGE_SIDE, generator=torch.Generator().manual_seed(seed))
FLOAT32_MAX = torch.finfo(torch.float32).max


class LSTMClassifier(L.LightningModule):
    """`nn.LSTM` (or `nn.GRU`) over an image read as a sequence, then `nn.Linear` on the final state."""

    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        cell: Literal["lstm", "gru"] = "lstm",
        sequence: Literal["rows", "pixels", "permuted"] = "rows",
        permutation_seed: int = 0,
        forget_bias: float = 1.0,
        recurrent_init: Literal["default", "orthogonal", "identity"] = "default",
        optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: Literal["none", "onecycle", "cosine"] = "none",
        warmup_pct: float = 0.3,
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
        """
        super().__init__()
        if hidden_size < 1:
            raise ConfigError(f"model.hidden_size must be at least 1, got {hidden_size}")
        if num_layers < 1:
            raise ConfigError(f"model.num_layers must be at least 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {dropout}")
        if not lr > 0:
            raise ConfigError(f"model.lr must be positive, got {lr}")
        if not lr <= FLOAT32_MAX:  # the optimizers multiply float32 tensors by it
            raise ConfigError(f"model.lr must be at most {FLOAT32_MAX:.3g}, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"model.weight_decay must not be negative, got {weight_decay}")
        if sequence == "permuted" and permutation_seed < 0:
            raise ConfigError(f"model.permutation_seed must not be negative, got {permutation_seed}")
        if not weight_decay <= FLOAT32_MAX:
            raise ConfigError(f"model.weight_decay must be at most {FLOAT32_MAX:.3g}, got {weight_decay}")
        if not 0.0 < warmup_pct < 1.0:
            raise ConfigError(f"model.warmup_pct must lie in (0, 1), got {warmup_pct}")
        self.save_hyperparameters()

        rnn_class = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            input_size=IMAGE_SIDE if sequence == "rows" else 1,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
            batch_first=True,
        )
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), NUM_CLASSES)
        self._init_recurrent_weights(recurrent_init)
        if cell == "lstm":
            self._init_forget_bias(forget_bias)
        if sequence == "permuted":
            # A buffer: saved in the checkpoint with the weights it was trained with.
            self.register_buffer("permutation", pixel_permutation(permutation_seed))

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

    def _init_recurrent_weights(self, how: str) -> None:
        if how == "default":
            return
        hidden = self.hparams.hidden_size
        for name, weight in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                # One (hidden x hidden) block per gate, each initialised on its own.
                for block in weight.data.split(hidden, dim=0):
                    if how == "orthogonal":
                        nn.init.orthogonal_(block)
                    else:
                        block.copy_(torch.eye(hidden))

    def _init_forget_bias(self, value: float) -> None:
        # PyTorch packs the gates as (input, forget, cell, output) and adds two bias vectors,
        # so the forget gate's effective bias is the sum of both slices.
        hidden = self.hparams.hidden_size
        for name, bias in self.rnn.named_parameters():
            if name.startswith("bias"):
                with torch.no_grad():
                    bias[hidden : 2 * hidden].fill_(value / 2)

    def to_sequence(self, images: torch.Tensor) -> torch.Tensor:
        """(batch, 28, 28) images -> (batch, steps, features) sequences as configured."""
        if self.hparams.sequence == "rows":
            return images
        # flatten, not reshape(len(images), ...): len() would fix the batch size in an exported graph
        pixels = images.flatten(1).unsqueeze(-1)
        if self.hparams.sequence == "permuted":
            pixels = pixels[:, self.permutation]
        return pixels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (batch, 10) for normalized images (batch, 28, 28)."""
        _, h_n = self.rnn(self.to_sequence(images))
        if isinstance(h_n, tuple):  # an LSTM returns (h_n, c_n)
            h_n = h_n[0]
        # h_n is (layers * directions, batch, hidden). The last layer's forward state is at the
        # final row; its backward state finished at row 0, which output[:, -1] would miss.
        if self.hparams.bidirectional:
            features = torch.cat([h_n[-2], h_n[-1]], dim=1)
        else:
            features = h_n[-1]
        return self.head(features)

    def per_step_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (batch, steps, 10) of the head applied to the top layer's output after every time step.

        For a model reading in one direction, step t is the answer it would give had the sequence
        stopped there (after row t+1 with sequence=rows), and the last step is forward()'s answer.
        A bidirectional model's output at step t also holds the backward pass over steps t..end,
        so only its last step's forward half and first step's backward half are complete states:
        its per-step logits are not a running answer.
        """
        output, _ = self.rnn(self.to_sequence(images))
        return self.head(output)

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
        loss, preds, labels = self.model_step(batch)
        # Accuracy over the epoch's batches (logged in on_train_epoch_end): a single batch's
        # accuracy, the notebook's "minibatch accuracy", is too noisy to read at small batches.
        self.train_acc.update(preds, labels)
        # self.log costs about as much as a whole training step at batch 10 (Lightning re-homes
        # its result store on every call), so the loss is logged only on the steps the logger
        # writes: the same points on the dashboard, a fraction of the cost.
        if (self.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # compute() already gathers all ranks; sync_dist only averages equal values (and tells
        # Lightning so).
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
        probs = self(images).float().softmax(dim=1)
        return {"probs": probs, "labels": labels}

    def on_train_start(self) -> None:
        # A resumed schedule keeps the length it was built for; with another max_epochs or max_steps,
        # onecycle would fail when it runs out of steps and cosine would silently climb back up.
        total = int(self.trainer.estimated_stepping_batches)
        for config in self.trainer.lr_scheduler_configs:
            built_for = getattr(config.scheduler, "total_steps", None) or getattr(config.scheduler, "T_max", None)
            if built_for is not None and built_for != total:
                raise ConfigError(
                    f"the checkpoint's {self.hparams.scheduler} schedule was built for {built_for} steps but this run"
                    f" has {total}; resume with the run's own --trainer.max_epochs / --trainer.max_steps"
                )

    def configure_optimizers(self):
        hp = self.hparams
        # Fused Adam updates all parameters in one kernel instead of a handful of ops per tensor,
        # which matters when a step takes a millisecond (batch 10). Lightning's mixed-precision
        # plugin refuses gradient clipping with fused optimizers, so clipped runs use foreach.
        clipping = bool(self._trainer is not None and self.trainer.gradient_clip_val)
        fast = {"foreach": True} if clipping else {"fused": True}
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, **fast)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, **fast)
        elif hp.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(self.parameters(), lr=hp.lr, alpha=0.9, weight_decay=hp.weight_decay)
        elif hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay
            )
        else:
            raise ConfigError(f"model.optimizer must be adam, adamw, sgd or rmsprop, got {hp.optimizer!r}")
        if hp.scheduler == "none":
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        if hp.scheduler == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=total_steps, pct_start=hp.warmup_pct
            )
        elif hp.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        else:
            raise ConfigError(f"model.scheduler must be none, onecycle or cosine, got {hp.scheduler!r}")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

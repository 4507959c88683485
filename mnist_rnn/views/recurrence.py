"""`RecurrenceViews`: TensorBoard views of how the network reads, step by step (drawn in pictures.py).

What each view shows and how to read it: docs/dashboards.md. The network is read through its
public methods and its layers' public weights (mnist_rnn/views/unroll.py)."""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mnist_rnn.errors import ConfigError
from mnist_rnn.views.dashboards import tensorboard_logger, val_step
from mnist_rnn.views.pictures import curve_image, gates_image, unit_range
from mnist_rnn.views.unroll import gradient_by_step, unroll

MAX_TABLE_ROWS = 28  # a text table longer than this is thinned to every (T / 28)th step


class RecurrenceViews(Callback):
    """Views of how the recurrent network reads; each can be switched off on its own (0 or false)."""

    def __init__(
        self,
        accuracy_by_steps: bool = True,
        gradient_every_n_steps: int = 100,
        gradient_digits: int = 64,
        gate_digits: int = 4,
        embedding_digits: int = 1000,
    ) -> None:
        """
        Args:
            accuracy_by_steps: Log `views/accuracy_by_steps_read` each validation (from the validation
                step's own pass; a bidirectional model reads the set again, about 15 times: see docs).
            gradient_every_n_steps: Log `views/gradient_by_step` every this many training steps
                (and at the first); 0: never.
            gradient_digits: Size of the fixed validation batch the gradient is taken on.
            gate_digits: How many fixed validation digits `views/gates` shows; 0: no gates view.
            embedding_digits: How many fixed validation digits `views/hidden_state` projects; 0: none.
        """
        super().__init__()
        for name, value in (("gradient_every_n_steps", gradient_every_n_steps), ("gate_digits", gate_digits),
                            ("embedding_digits", embedding_digits)):  # fmt: skip
            if value < 0:
                raise ConfigError(f"RecurrenceViews {name} must be 0 (off) or more, got {value}")
        if gradient_digits < 1:
            raise ConfigError(f"RecurrenceViews gradient_digits must be at least 1, got {gradient_digits}")
        self.accuracy_by_steps = accuracy_by_steps
        self.gradient_every_n_steps = gradient_every_n_steps
        self.gradient_digits = gradient_digits
        self.gate_digits = gate_digits
        self.embedding_digits = embedding_digits
        self._fixed: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._correct: Optional[torch.Tensor] = None  # per k: validation digits right after k steps
        self._seen = 0
        self._last_gradient_step = -1
        self._hook: Optional[torch.utils.hooks.RemovableHandle] = None
        self._output: Optional[torch.Tensor] = None

    @staticmethod
    def _experiment(trainer: L.Trainer):
        logger = tensorboard_logger(trainer)
        return None if logger is None else logger.experiment

    def _fixed_digits(self, trainer: L.Trainer, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n digits (and labels) of the validation loader, fetched once per fit for all views.

        Never shuffled: the same digits at every call and in every run with the same data settings.
        The datamodule's loader exists before the first validation; else fit()'s."""
        if self._fixed is None:
            needed = max(self.gradient_digits, self.gate_digits, self.embedding_digits)
            images, labels = [], []
            loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else trainer.val_dataloaders
            for batch_images, batch_labels in loader:
                images.append(batch_images)
                labels.append(batch_labels)
                if sum(map(len, labels)) >= needed:
                    break
            self._fixed = (torch.cat(images)[:needed], torch.cat(labels)[:needed])
        images, labels = self._fixed
        return images[:n].to(device), labels[:n].to(device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fixed, self._last_gradient_step = None, -1

    # views/accuracy_by_steps_read

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._correct, self._seen = None, 0
        self._remove_hook()
        if self.accuracy_by_steps and not trainer.sanity_checking and not pl_module.net.bidirectional:
            # The validation step's own forward pass already computes the output after every step
            # (nn.LSTM returns it beside the final state): keep it, rather than reading the
            # validation set a second time, which would cost as much as validation itself.
            self._hook = pl_module.net.rnn.register_forward_hook(self._keep_output)

    def _keep_output(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self._output = output[0].detach()  # (batch, steps, hidden); output[1] is the final state

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._output = None, None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hook()  # training must not keep its outputs alive

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not self.accuracy_by_steps or trainer.sanity_checking or self._experiment(trainer) is None:
            return
        images, labels = batch
        net = pl_module.net
        # In the precision validation itself runs in, so that k = T repeats val/acc exactly.
        with trainer.precision_plugin.forward_context():
            if net.bidirectional:
                grid = _ks_read(net.to_sequence(images[:1]).shape[1], bidirectional=True)
                logits = torch.stack([net.head(net.features(images, steps=k)) for k in grid], dim=1)
            elif self._output is not None:
                logits = net.head(self._output)  # what per_step_logits(images) computes
            else:  # the validation step did not run the network (a model of another kind)
                logits = net.per_step_logits(images)
        self._output = None
        correct = (logits.argmax(dim=-1) == labels[:, None]).sum(dim=0)
        self._correct = correct if self._correct is None else self._correct + correct
        self._seen += len(labels)

    def _log_accuracy(self, trainer: L.Trainer, pl_module: L.LightningModule, experiment) -> None:
        # Summed over all devices (each validated its own share), then drawn once.
        correct = trainer.strategy.reduce(self._correct.float(), reduce_op="sum")
        seen = trainer.strategy.reduce(torch.tensor(float(self._seen), device=correct.device), reduce_op="sum")
        if not trainer.is_global_zero:
            return
        net = pl_module.net
        steps = net.to_sequence(torch.zeros(1, 28, 28, device=pl_module.device)).shape[1]
        grid = _ks_read(steps, net.bidirectional)
        accuracy = (correct / seen).tolist()
        unit = "row" if net.sequence == "rows" else "pixel"
        step = val_step(trainer)
        title = f"validation accuracy after reading the first k {unit}s ({int(seen)} digits)"
        image = curve_image([("accuracy", (31, 119, 180), grid, accuracy)], title, f"k ({unit}s read)")
        experiment.add_image("views/accuracy_by_steps_read", image, step)
        listed = set(_table_ks(grid))
        rows = [[str(k), f"{a:.6f}"] for k, a in zip(grid, accuracy) if k in listed]
        experiment.add_text("views/accuracy_by_steps_read", _markdown_table([f"k ({unit}s read)", "accuracy"], rows), step)

    # views/gates, and both validation views' logging

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = self._experiment(trainer)
        if experiment is None or trainer.sanity_checking:
            return
        if self.accuracy_by_steps and self._correct is not None:
            self._log_accuracy(trainer, pl_module, experiment)
        if self.gate_digits and trainer.is_global_zero:
            images, labels = self._fixed_digits(trainer, self.gate_digits, pl_module.device)
            net = pl_module.net
            with torch.no_grad():
                unrolled = unroll(net, images.float(), keep_gates=True)
            image = gates_image(images, labels, unrolled.logits.argmax(dim=1), unrolled.gates, net.sequence)
            experiment.add_image("views/gates", image, val_step(trainer))

    # views/gradient_by_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        n = self.gradient_every_n_steps
        step = trainer.global_step
        # Crossing a multiple of n, not landing on it: a Lightning step may take several optimizer
        # steps (model.steps_per_execution), so global_step can jump over it. The first step counts.
        due = bool(n) and (self._last_gradient_step < 0 or step // n > self._last_gradient_step // n)
        if not due or not trainer.is_global_zero or tensorboard_logger(trainer) is None:
            return
        self._last_gradient_step = step
        experiment = self._experiment(trainer)
        net = pl_module.net
        images, labels = self._fixed_digits(trainer, self.gradient_digits, pl_module.device)
        norms = gradient_by_step(net, images, labels).cpu()
        unit = "row" if net.sequence == "rows" else "pixel"
        names = ["forward", "backward"] if net.bidirectional else ["gradient"]
        colours = [(214, 39, 40), (31, 119, 180)]
        steps = list(range(1, norms.shape[1] + 1))
        series = [(name, colour, steps, values.tolist()) for name, colour, values in zip(names, colours, norms)]
        title = f"|d loss / d hidden state| at each {unit}, mean over {len(labels)} validation digits"
        experiment.add_image("views/gradient_by_step", curve_image(series, title, unit, log_y=True), step)
        fingerprint = float(images.double().sum())
        header = f"fixed batch: the first {len(labels)} validation digits (pixel sum {fingerprint:.6f})\n\n"
        rows = [[str(k), *(f"{float(v[k - 1]):.3e}" for v in norms)] for k in _table_ks(steps)]
        experiment.add_text("views/gradient_by_step", header + _markdown_table([unit, *names], rows), step)

    # views/hidden_state

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = self._experiment(trainer)
        if not self.embedding_digits or experiment is None or not trainer.is_global_zero:
            return
        images, labels = self._fixed_digits(trainer, self.embedding_digits, pl_module.device)
        was_training = pl_module.training
        pl_module.eval()  # no dropout between layers: the state a prediction reads
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            chunks = [trainer.precision_plugin.convert_input(chunk) for chunk in images.split(500)]  # bf16-true: bf16 inputs
            features = torch.cat([pl_module.net.features(chunk) for chunk in chunks])
        pl_module.train(was_training)
        experiment.add_embedding(
            features.float().cpu(), metadata=[int(k) for k in labels.cpu()], label_img=unit_range(images)[:, None].cpu(),
            global_step=trainer.global_step, tag="views/hidden_state",
        )  # fmt: skip


def _table_ks(ks: list[int]) -> list[int]:
    """The ks a text table lists: all of them up to 28, else about 28 evenly spread, the last included."""
    if len(ks) <= MAX_TABLE_ROWS:
        return list(ks)
    stride = math.ceil(len(ks) / MAX_TABLE_ROWS)
    return sorted({ks[0], *ks[stride - 1 :: stride], ks[-1]})


def _ks_read(steps: int, bidirectional: bool) -> list[int]:
    # A one-direction network gives every k from one pass. A bidirectional one must read each
    # cut sequence again (its backward half starts at step k), so it gets about 28 ks.
    ks = list(range(1, steps + 1))
    return _table_ks(ks) if bidirectional else ks


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """A right-aligned markdown table, what a TEXT view shows."""
    return "".join("| " + " | ".join(cells) + " |\n" for cells in [columns, ["---:"] * len(columns), *rows])

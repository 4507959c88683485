"""What the terminal shows: tqdm's bar where there is one, one line per epoch in logs and pipes,
and the closing report of `fit`."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from mnist_rnn.run.folders import newest_in


class EpochLineProgressBar(ProgressBar):
    """One line per epoch, for output that is not a terminal (CI logs, `| tee`, nohup), where tqdm's
    carriage-return redraws turn into one enormous line."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._epoch_start = 0.0
        self._pending: Optional[tuple[int, int, float]] = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed mid-epoch starts without on_train_epoch_start.
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The module logs train/acc in its own on_train_epoch_end, after this hook: printed later (next epoch, or fit's end).
        self._pending = (trainer.current_epoch, trainer.global_step, time.perf_counter() - self._epoch_start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None or not self._enabled:
            return
        epoch, step, seconds = self._pending
        self._pending = None
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        print(f"epoch {epoch + 1}/{total}  step {step}  {shown}  ({seconds:.1f} s)", flush=True)


def default_progress_bar() -> ProgressBar:
    """A tqdm bar on a terminal, one line per epoch elsewhere."""
    if sys.stdout.isatty():
        # Redrawing every batch costs time at small batch sizes; 20 batches still looks live.
        return TQDMProgressBar(refresh_rate=20)
    return EpochLineProgressBar()


def fit_report(trainer: L.Trainer) -> str:
    """What `fit` prints at its end: the best checkpoint, its score, the logs, and how to test it. Every rank
    must call it (asking for the log folder is a collective under DDP); only rank 0 gets a report, others ""."""
    log_dir = trainer.log_dir
    if not trainer.is_global_zero or trainer.checkpoint_callback is None:
        return ""
    ckpt = trainer.checkpoint_callback
    # Without a validation score there is no best checkpoint; the newest one is the run's result.
    best = ckpt.best_model_path or str(newest_in(Path(ckpt.dirpath or ".")) or "")
    score = ckpt.best_model_score
    lines = [f"best checkpoint: {best or '(none saved)'}"]
    if score is None and ckpt.monitor and best:
        lines[0] += f"  (the newest: no validation ran, so none was chosen on {ckpt.monitor})"
    if score is not None:
        lines.append(f"best {ckpt.monitor}: {float(score):.4f}")
    if trainer.logger is not None and log_dir:
        lines.append(f"logs: {log_dir}  (view with: tensorboard --logdir {Path(log_dir).parent.parent})")
    if best:
        saved_config = Path(log_dir or "") / "config.yaml"
        config = ["-c", str(saved_config)] if saved_config.is_file() else []
        lines.append("test it: " + shlex.join(["mnist-rnn", "test", *config, "--ckpt_path", best]))
    return "\n".join(lines)


class SummaryWithoutFlops(ModelSummary):
    """Lightning's model summary without its FLOPs column and total.

    Lightning counts FLOPs only through an `example_input_array` and none for an LSTM (torch's FLOP counter
    has no formula for its kernel): its summary ended in a wrong `0 Total Flops` on every command's first screen.
    """

    @staticmethod
    def summarize(summary_data, total_parameters: int, trainable_parameters: int, model_size: float,
                  total_training_modes: dict, total_flops: int, **summarize_kwargs) -> None:  # fmt: skip
        columns = [(name, [str(v) for v in values]) for name, values in summary_data if name != "FLOPs"]
        widths = [max([len(name), *map(len, values)]) for name, values in columns]
        rows = [[name for name, _ in columns], *zip(*(values for _, values in columns))]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
        rule = "-" * max(map(len, lines))
        lines[1:1] = [rule]
        lines += [rule, f"{get_human_readable_count(trainable_parameters):<10}Trainable params",
                  f"{get_human_readable_count(total_parameters):<10}Total params",
                  f"{model_size:<10.3f}Total estimated model params size (MB)"]  # fmt: skip
        print("\n".join(lines), flush=True)

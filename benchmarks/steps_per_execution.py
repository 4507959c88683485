"""Measures one lever for small batches, NOT a feature: K optimizer steps per Lightning step.

`python -m benchmarks.micro_batches` trains the seed model (`mnist-rnn fit -c seed`, LSTM 50,
batch 10, fp32, 1 thread) through the real CLI, in child processes taking turns, with
RecurrentClassifier's training step replaced (in the child only) by a manual-optimization step
that splits a batch of 10*K into K micro-batches of 10 and steps the optimizer after each, so
every optimizer step is still one of batch 10 (Keras's `steps_per_execution` idea). It prints
samples/s over optimizer steps [200, 1800) for:

  K=0      today's path (automatic optimization, one optimizer step per Lightning step)
  K=1      manual optimization, one micro-batch per Lightning step
  K=8      8 micro-batches, through Lightning's manual_backward and LightningOptimizer.step
  K=8 raw  8 micro-batches, backward and the optimizer's own step() (Lightning's step counter
           advanced by hand, a private attribute), no per-micro-batch hooks
  K=32 raw the same with 32

It is not landed because a real K>1 path changes what several settings count (val_check_interval
and log_every_n_steps count Lightning steps, max_steps can overshoot by K-1, schedules count
batches, ModelCheckpoint's train_time_interval is skipped under manual optimization, resuming
mid-epoch skips Lightning steps): see docs/speed.md.
"""

from __future__ import annotations

import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import lightning as L
import torch

VARIANTS = {"K=0": (0, False), "K=1": (1, False), "K=8": (8, False), "K=8 raw": (8, True), "K=32 raw": (32, True)}
WARMUP, STEPS, MICRO = 200, 1600, 10


class Timer(L.Callback):
    """samples/s over optimizer steps [WARMUP, WARMUP + STEPS), printed as `RATE n`."""

    def __init__(self) -> None:
        self.start = self.seconds = None

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.start is None and trainer.global_step >= WARMUP:
            self.start, self.first = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.seconds is None and self.start is not None and trainer.global_step >= WARMUP + STEPS:
            self.seconds = time.perf_counter() - self.start
            print(f"RATE {(trainer.global_step - self.first) * MICRO / self.seconds:.0f}", flush=True)


def _micro_batch_step(self, batch, batch_idx):
    optimizer = self.optimizers()
    progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    images, labels = batch
    predictions, loss = [], None
    for x, y in zip(images.split(MICRO), labels.split(MICRO)):
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        predictions.append(logits.argmax(1))
        if self._raw:
            optimizer.optimizer.zero_grad()
            loss.backward()
            optimizer.optimizer.step()
            progress.increment_ready()
            progress.increment_completed()
        else:
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
    self.train_acc.update(torch.cat(predictions), labels)  # once per Lightning step
    if (self.global_step // self._k) % max(self.trainer.log_every_n_steps, 1) == 0:
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)


def child(k: int, raw: bool) -> None:
    from mnist_rnn.model import RecurrentClassifier

    if k:
        original = RecurrentClassifier.__init__

        @functools.wraps(original)  # keeps the signature the CLI reads
        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            self._k, self._raw = k, raw
            self.automatic_optimization = False

        RecurrentClassifier.__init__ = __init__
        RecurrentClassifier.training_step = _micro_batch_step
    from mnist_rnn.cli import main

    batch, every = (MICRO, 2000) if k == 0 else (MICRO * k, 2000 // k)
    main(["fit", "-c", "seed", "--data.batch_size", str(batch), "--trainer.val_check_interval", str(every),
          "--trainer.max_steps", str(WARMUP + STEPS + 100), "--threads", "1",
          "--trainer.callbacks+=benchmarks.micro_batches.Timer"])  # fmt: skip


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rates: dict = {name: [] for name in VARIANTS}
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="mnist-rnn-micro-") as tmp:
        for rep in range(reps):
            for name, (k, raw) in VARIANTS.items():
                workdir = os.path.join(tmp, f"{rep}-{k}-{int(raw)}")
                os.mkdir(workdir)
                code = f"from benchmarks.micro_batches import child; child({k}, {raw})"
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
                out = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True)
                rate = re.search(r"^RATE (\d+)$", out.stdout, re.M)
                if rate is None:
                    raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
                rates[name].append(int(rate.group(1)))
                print(f"rep {rep} {name}: {rates[name][-1]} samples/s", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    for name, values in rates.items():
        ratios = [v / base for v, base in zip(values, rates["K=0"])]
        print(f"{name:<9} median {statistics.median(values):>6,.0f} samples/s; vs K=0 in the same repetition:"
              f" median {statistics.median(ratios):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

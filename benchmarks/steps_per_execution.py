"""How fast the seed model trains with several optimizer steps per Lightning step.

`python -m benchmarks.steps_per_execution [REPS]` trains the seed model (`mnist-rnn fit -c seed`:
LSTM 50, batch 10, fp32, 1 thread) through the real CLI with model.steps_per_execution K = 1, 10
and 50, in child processes taking turns, and prints samples/s over optimizer steps [500, 2500)
(no validation inside that window), with each K's ratio to K = 1 in the same repetition. Every
K trains the same steps on the same batches (tests/test_steps_per_execution.py); only Lightning's
per-step work is paid once per K steps.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import lightning as L

KS = (1, 10, 50)
WARMUP, STEPS, BATCH = 500, 2000, 10


class Timer(L.Callback):
    """samples/s over optimizer steps [WARMUP, WARMUP + STEPS), printed as `RATE n`."""

    def __init__(self) -> None:
        self.start = self.first = None
        self.done = False

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.start is None and trainer.global_step >= WARMUP:
            self.start, self.first = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if not self.done and self.start is not None and trainer.global_step >= WARMUP + STEPS:
            self.done = True
            seconds = time.perf_counter() - self.start
            print(f"RATE {(trainer.global_step - self.first) * BATCH / seconds:.0f}", flush=True)


def child(k: int) -> None:
    from mnist_rnn.commands import main

    main(["fit", "-c", "seed", "--model.steps_per_execution", str(k), "--trainer.max_steps", str(WARMUP + STEPS + 50),
          "--threads", "1", "--trainer.enable_progress_bar", "false",
          "--trainer.callbacks+=benchmarks.steps_per_execution.Timer"])  # fmt: skip


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rates: dict = {k: [] for k in KS}
    print(f"load average at start: {os.getloadavg()}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory(prefix="mnist-rnn-steps-") as tmp:
        for rep in range(reps):
            for k in KS:
                workdir = os.path.join(tmp, f"{rep}-{k}")
                os.mkdir(workdir)
                code = f"from benchmarks.steps_per_execution import child; child({k})"
                out = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True)
                rate = re.search(r"^RATE (\d+)$", out.stdout, re.M)
                if rate is None:
                    raise SystemExit(f"K={k} failed:\n{out.stderr[-2000:]}")
                rates[k].append(int(rate.group(1)))
                print(f"rep {rep} K={k}: {rates[k][-1]} samples/s", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    for k, values in rates.items():
        ratios = [v / base for v, base in zip(values, rates[1])]
        print(f"K={k:<3} median {statistics.median(values):>6,.0f} samples/s; vs K=1 in the same repetition:"
              f" median {statistics.median(ratios):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

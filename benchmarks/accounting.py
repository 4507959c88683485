"""Where a default epoch's time goes: `mnist-rnn fit` under Lightning's SimpleProfiler against the
bare loop of benchmarks/bench.py, per training step and per epoch, in ms and as a share of the
fit's epoch.

    python -m benchmarks.accounting                       # 32-true and bf16-mixed (where native), 1 thread
    python -m benchmarks.accounting --threads 2 --precisions 32-true

The profiler times each hook it wraps (a few microseconds each, about 60 a step), so the profiled
fit is a little slower than an unprofiled one: the shares are what to read, the bench's throughput
section gives the unprofiled rates. `bench.py --only throughput` prints this table too.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import torch

from benchmarks.loops import CASES, bare_in_memory, project_fit

# Per-step parts, disjoint, in the order a step runs them: (label, actions summed). The optimizer's
# own step is what [LightningModule].optimizer_step holds beyond the closure's parts (see below).
STEP_PARTS = (
    ("batch: next(), transfer and the data module's shift", (
        "[_TrainingEpochLoop].train_dataloader_next", "[LightningModule]*.on_before_batch_transfer",
        "[LightningModule]*.transfer_batch_to_device", "[LightningModule]*.on_after_batch_transfer",
        "[LightningDataModule]*.on_before_batch_transfer", "[LightningDataModule]*.on_after_batch_transfer")),
    ("forward, loss, train/acc update, logging (training_step)", ("[Strategy]*.training_step",)),
    ("backward (autocast's casts' gradients included)", ("[Strategy]*.backward",)),
    ("gradient clipping (norm 1.0)", ("[LightningModule]*.configure_gradient_clipping",)),
    ("zero_grad", ("[LightningModule]*.optimizer_zero_grad",)),
    ("lr scheduler step", ("[LightningModule]*.lr_scheduler_step",)),
)  # fmt: skip
CLOSURE = ("[Strategy]*.training_step", "[Strategy]*.backward", "[LightningModule]*.configure_gradient_clipping",
           "[LightningModule]*.optimizer_zero_grad")  # fmt: skip
GRADIENT_VIEW = "[Callback]RecurrenceViews.on_train_batch_end"  # train/gradient_by_step, every 100 steps
EPOCH_PARTS = (
    ("validation passes (5,000 digits)",
     (r"\[Strategy\].*\.validation_step", r"\[_EvaluationLoop\]\.val_next")),
    ("validation views (accuracy by rows read, gates, confusion, misclassified)",
     (r"\[Callback\](RecurrenceViews|TensorBoardDashboards)\.on_validation_",)),
    ("checkpoints (last.ckpt, best, weights check)", (r"^save_checkpoint$", r"\[Callback\].*\.on_save_checkpoint",
                                                      r"\[Callback\]ModelCheckpoint.*\.on_(train_epoch|validation)_end")),
)  # fmt: skip


def _total(durations: dict[str, list[float]], pattern: str, regex: bool = False) -> float:
    """Seconds of every action named `pattern` (`*`: any class name) or, with regex, matching it."""
    if not regex:
        pattern = "^" + re.escape(pattern).replace(r"\*", ".*") + "$"
    return sum(sum(v) for k, v in durations.items() if re.search(pattern, k))


def account(durations: dict[str, list[float]], epoch_seconds: float, steps: int, bare_step_s: float,
            recipe_step_s: float, sanity_batches: int = 0) -> dict:
    """The accounting of one profiled epoch: rows of (label, ms per step or s per epoch, share of the epoch).
    The first `sanity_batches` validation batches ran before the epoch (the sanity check) and are left out."""
    durations = {k: v[sanity_batches:] if k.endswith((".validation_step", ".val_next")) else v for k, v in durations.items()}
    per_step = [(label, sum(_total(durations, p) for p in patterns)) for label, patterns in STEP_PARTS]
    optimizer = _total(durations, "[LightningModule]*.optimizer_step") - sum(_total(durations, p) for p in CLOSURE)
    per_step.insert(5, ("Adam step (fused) and the closure's hook dispatch", optimizer))
    per_step.append(("train/gradient_by_step view (every 100 steps)", _total(durations, GRADIENT_VIEW)))
    hooks = {k: sum(v) for k, v in durations.items() if k.startswith("[Callback]") and "on_train_batch_" in k and k != GRADIENT_VIEW}
    largest = sorted(hooks.items(), key=lambda item: -item[1])[:4]
    top = ", ".join(f"{k[10:].split('{')[0].split('.')[0]} {1e3 * s / steps:.2f}" for k, s in largest)
    per_step.append((f"other callbacks' on_train_batch_start/end (largest, ms: {top})", sum(hooks.values())))
    per_epoch = [(label, sum(_total(durations, p, regex=True) for p in patterns)) for label, patterns in EPOCH_PARTS]
    known = sum(s for _, s in per_step) + sum(s for _, s in per_epoch)
    per_epoch.append(("Lightning's loop and the rest (not in a profiled action)", epoch_seconds - known))
    return {
        "steps": steps, "epoch_s": epoch_seconds, "bare_step_ms": 1e3 * bare_step_s, "recipe_step_ms": 1e3 * recipe_step_s,
        "fit_step_ms": 1e3 * (epoch_seconds - sum(s for _, s in per_epoch)) / steps,
        "per_step": [(label, 1e3 * s / steps, s / epoch_seconds) for label, s in per_step],
        "per_epoch": [(label, s, s / epoch_seconds) for label, s in per_epoch],
        "fit_end_s": _total(durations, "[Callback]RecurrenceViews.on_fit_end"),
        "epoch_vs_bare": steps * bare_step_s / epoch_seconds,
        "epoch_vs_recipe": steps * recipe_step_s / epoch_seconds,
    }  # fmt: skip


def profiled_epoch(precision: str, threads: int, workdir: Path, images: torch.Tensor, labels: torch.Tensor,
                   case: dict | None = None, extra: tuple[str, ...] = ()) -> dict:
    """One whole epoch of `case` (the default model) under SimpleProfiler, then the bare loop, bare and
    with the recipe's optimizer step, at the same precision and threads."""
    case = case or CASES["default"]
    warmup, timed = case["steady"]
    flags = ["--trainer.profiler", "lightning.pytorch.profilers.SimpleProfiler",  # its report into a file, not stdout
             "--trainer.profiler.dirpath", str(workdir), "--trainer.profiler.filename", "profile",
             "--trainer.precision", precision, "--threads", str(threads), *extra]  # fmt: skip
    timer, cli = project_fit(case, warmup, timed, workdir, flags)
    durations = cli.trainer.profiler.recorded_durations
    steps, epoch_s = sum(timer.epoch_samples) // case["batch"], timer.end - timer.epoch_starts[0]
    torch.set_num_threads(threads)
    bf16 = precision == "bf16-mixed"
    bare = case["batch"] / bare_in_memory(case, warmup, timed, images, labels, bf16)
    recipe = case["batch"] / bare_in_memory(case, warmup, timed, images, labels, bf16, recipe=True)
    sanity = cli.trainer.num_sanity_val_steps  # one batch of 1,000 (conf/default.yaml), fewer than the loader has
    return {"precision": precision, "threads": threads, **account(durations, epoch_s, steps, bare, recipe, sanity)}


def table(a: dict) -> str:
    """The accounting as a markdown table (docs/speed.md's layout)."""
    lines = [f"{a['precision']}, {a['threads']} thread(s): one epoch of {a['steps']} steps in {a['epoch_s']:.2f} s"
             f" (profiled); bare loop {a['bare_step_ms']:.2f} ms a step, the fit {a['fit_step_ms']:.2f} ms;"
             f" epoch / bare {a['epoch_vs_bare']:.2f}x, epoch / bare with the recipe's step {a['epoch_vs_recipe']:.2f}x",
             "| part | ms per step | s per epoch | share of the epoch |", "| --- | ---: | ---: | ---: |",
             f"| bare loop's whole step (same math, fused Adam, no clipping) | {a['bare_step_ms']:.2f} |"
             f" {a['bare_step_ms'] * a['steps'] / 1e3:.2f} | {a['epoch_vs_bare']:.0%} |",
             "| bare loop with the recipe's whole step (1-pixel shift, clipped to norm 1.0, fused Adam, weight average) |"
             f" {a['recipe_step_ms']:.2f} |"
             f" {a['recipe_step_ms'] * a['steps'] / 1e3:.2f} | {a['recipe_step_ms'] * a['steps'] / 1e3 / a['epoch_s']:.0%} |",
             "| **the fit's epoch, part by part:** | | | |"]  # fmt: skip
    lines += [f"| {label} | {ms:.2f} | {ms * a['steps'] / 1e3:.2f} | {share:.1%} |" for label, ms, share in a["per_step"]]
    lines += [f"| {label} | | {s:.2f} | {share:.1%} |" for label, s, share in a["per_epoch"]]
    lines.append(f"| (once per fit, after the last epoch: val/hidden_state embedding) | | {a['fit_end_s']:.2f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from mnist_rnn.data.datamodule import MNISTDataModule
    from mnist_rnn.run.hardware import native_bf16_cpu

    parser = argparse.ArgumentParser(prog="python -m benchmarks.accounting", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides (default 1)")
    parser.add_argument("--precisions", default="32-true,bf16-mixed", help="comma-separated (bf16 only where native)")
    args = parser.parse_args(argv)
    dm = MNISTDataModule()
    dm.setup("fit")
    images, labels = dm.datasets["train"].images, dm.datasets["train"].labels
    with tempfile.TemporaryDirectory(prefix="mnist-rnn-accounting-") as tmp:
        for i, precision in enumerate(p.strip() for p in args.precisions.split(",")):
            if precision.startswith("bf16") and not native_bf16_cpu():
                print(f"{precision}: skipped, this CPU has no native bf16")
                continue
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            print(table(profiled_epoch(precision, args.threads, workdir, images, labels)), "\n", flush=True)


if __name__ == "__main__":
    main()

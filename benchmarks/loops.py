"""The two sides a throughput figure compares (benchmarks/bench.py, benchmarks/accounting.py,
benchmarks/gpu_check.py): `mnist-rnn fit` in this process with a timer on its steps and epochs, and the same
math without the framework, as the script people write (`handwritten_reference`) and as a bare in-memory loop
(`bare_in_memory`), both through `_step_loop`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from mnist_rnn.commands.cli import MnistRnnCLI, cli_main, config_file
from mnist_rnn.data.batches import shift_images
from mnist_rnn.data.normalization import MNIST_MEAN, MNIST_STD
from mnist_rnn.run.averaging import warmed_up_ema

# The two models the issue tracks: the everyday config and the notebook's. `steady` is the
# window of training steps timed without validation or checkpoints (warm-up, timed steps).
CASES = {
    # recipe: the bare loop does the everyday recipe's whole step (shift, clipping, weight average), as the fit does.
    "default": {"config": "default.yaml", "hidden": 128, "batch": 128, "precisions": ("32-true", "bf16-mixed"),
                "steady": (50, 300), "epochs": 1, "recipe": True},
    "seed": {"config": "seed.yaml", "hidden": 50, "batch": 10, "precisions": ("32-true",),
             "steady": (200, 1600), "epochs": None, "smoke_steady": (50, 50)},  # whole Lightning steps of 50
}  # fmt: skip


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work before a clock is read (its kernels run after the Python that queued them)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Two clocks on a fit. Steady state: the wall time of training steps [warmup, warmup + steps),
    start-up, validation and epoch-end work excluded (unless they fall inside the window). Whole
    epochs: from each epoch's start to the next one's (or the end of training), so the epoch's
    validation, dashboards and checkpoint writes count, with the samples the epoch trained on."""

    def __init__(self, warmup: int = 50, steps: int = 300) -> None:
        self.warmup, self.steps = warmup, steps
        self.start: Optional[float] = None
        self.seconds: Optional[float] = None
        self.timed_steps: Optional[int] = None  # optimizer steps inside the window, once it closed
        self.epoch_starts: list[float] = []
        self.epoch_samples: list[int] = []
        self.end: Optional[float] = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_starts.append(time.perf_counter())
        self.epoch_samples.append(0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # >=: with model.steps_per_execution K, global_step moves K optimizer steps a batch.
        if self.start is None and trainer.global_step >= self.warmup:
            synchronize(pl_module.device)
            self.start, self.first_step = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        batches = batch if isinstance(batch, list) else [batch]  # K batches per Lightning step
        self.epoch_samples[-1] += sum(len(labels) for _, labels in batches)
        if self.seconds is None and self.start is not None and trainer.global_step >= self.warmup + self.steps:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.start
            self.timed_steps = trainer.global_step - self.first_step  # may pass `steps` by up to K - 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()

    def epoch_rates(self) -> list[float]:
        """samples/s of each whole epoch (the first one's warm-up steps included)."""
        ends = [*self.epoch_starts[1:], self.end]
        return [n / (e - s) for s, e, n in zip(self.epoch_starts, ends, self.epoch_samples)]


def project_fit(case: dict, warmup: int, steps: int, workdir: Path, extra: list[str]) -> tuple[StepTimer, "MnistRnnCLI"]:
    """`mnist-rnn fit -c <config>` in this process, as a user runs it, with the timer appended last."""
    length = ["--trainer.max_epochs", str(case["epochs"])] if case.get("epochs") else ["--trainer.max_steps", str(warmup + steps + 1)]
    args = [
        "fit",
        "-c", config_file(case["config"]),
        *length,
        "--trainer.callbacks+=benchmarks.loops.StepTimer",
        f"--trainer.callbacks.warmup={warmup}",
        f"--trainer.callbacks.steps={steps}",
        *extra,
    ]  # fmt: skip
    old = os.getcwd()
    os.chdir(workdir)
    try:
        cli = cli_main(args)
    finally:
        os.chdir(old)
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, StepTimer)), cli


def _step_loop(batches: Callable[[], tuple[torch.Tensor, torch.Tensor]], hidden: int, warmup: int, steps: int,
               bf16: bool = False, fused: bool = False, device: str | torch.device = "cpu", recipe: bool = False) -> float:
    """Seconds for `steps` plain PyTorch training steps after `warmup` steps on `device` (cuDNN on a GPU).
    With bf16, the one line a user adds: the forward pass under torch.autocast. With recipe, the everyday
    recipe's whole step written by hand: digits shifted by up to 1 pixel, gradients clipped to norm 1.0,
    and the weight average updated after the step (conf/default.yaml, mnist_rnn/run/averaging.py)."""
    torch.manual_seed(0)
    device = torch.device(device)
    rnn, head = nn.LSTM(28, hidden, batch_first=True).to(device), nn.Linear(hidden, 10).to(device)
    params = [*rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=fused)
    net = nn.ModuleList([rnn, head])  # what the average holds and is updated from
    average = AveragedModel(net, multi_avg_fn=warmed_up_ema(0.9995)) if recipe else None
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        images, labels = batches()
        if recipe:
            images = shift_images(images, 1, -MNIST_MEAN / MNIST_STD)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, (h_n, _) = rnn(images)
            logits = head(h_n[-1])
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        if recipe:
            nn.utils.clip_grad_norm_(params, 1.0, foreach=True)  # as the model clips (model/optimization.py)
        optimizer.step()
        if average is not None:
            average.update_parameters(net)
    synchronize(device)
    return time.perf_counter() - start


def handwritten_reference(case: dict, warmup: int, steps: int, raw_root: Path, bf16: bool) -> float:
    """samples/s of the script people write: torchvision MNIST, per-sample transforms, DataLoader."""
    from torchvision import datasets, transforms

    dataset = datasets.MNIST(
        str(raw_root), train=True, download=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))]),
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(dataset, batch_size=case["batch"], shuffle=True)
    iterator = iter(loader)

    def batches():
        images, labels = next(iterator)
        return images.squeeze(1), labels  # (B, 1, 28, 28) -> rows as time steps

    return steps * case["batch"] / _step_loop(batches, case["hidden"], warmup, steps, bf16=bf16)


def bare_in_memory(case: dict, warmup: int, steps: int, images: torch.Tensor, labels: torch.Tensor, bf16: bool,
                   recipe: bool = False) -> float:
    """samples/s of the same math with no framework: random batches sliced from memory, fused Adam,
    on the device that holds `images` (benchmarks/gpu_check.py hands it the GPU's copy). With recipe:
    the everyday recipe's whole step (shifted digits, clipped gradients, the weight average; `_step_loop`)."""
    generator = torch.Generator().manual_seed(0)

    def batches():
        index = torch.randint(0, len(labels), (case["batch"],), generator=generator).to(images.device)
        return images[index], labels[index]

    seconds = _step_loop(batches, case["hidden"], warmup, steps, bf16=bf16, fused=True, device=images.device, recipe=recipe)
    return steps * case["batch"] / seconds

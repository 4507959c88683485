"""The speed benchmark: `python -m benchmarks.bench` (add --smoke for a run of seconds).

In one process, on the same data and model settings, it measures the project's real training
path (`mnist-rnn fit` through LightningCLI, with the default logging, metrics, checkpoints and
dashboards) against the usual hand-written script (torchvision's MNIST with per-sample
ToTensor/Normalize, a DataLoader, nn.LSTM + nn.Linear, Adam) and against the machine's matrix
multiply limit; then inference, peak memory and time to 99% test accuracy of a default fit.
It prints a table and writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import lightning as L
import torch
from torch import nn

from mnist_rnn.cli import MnistRnnCLI, cli_main, config_file
from mnist_rnn.hardware import auto_precision, auto_threads, native_bf16_cpu
from mnist_rnn.mnist_files import load_split
from mnist_rnn.data import MNIST_MEAN, MNIST_STD, MNISTDataModule
from mnist_rnn.mnist_files import EMBEDDED_DIR, IDX_FILES

# The two models the issue tracks: the everyday config and the notebook's.
CASES = {
    "default": {"config": "default.yaml", "hidden": 128, "batch": 128},
    "seed": {"config": "seed.yaml", "hidden": 50, "batch": 10},
}


def lstm_train_flop_per_sample(hidden: int, steps: int = 28, inputs: int = 28) -> float:
    """Matrix FLOP of one training sample: 4 gates x (input + hidden) x hidden multiply-adds
    per time step forward, and about twice that again backward."""
    forward = steps * 2 * 4 * hidden * (inputs + hidden)
    return 3 * forward


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(dtype: torch.dtype, n: int, seconds: float) -> float:
    """Best observed torch.mm throughput for n x n matrices on the CPU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


class StepTimer(L.Callback):
    """Wall time of training steps [warmup, warmup + steps): steady state, start-up excluded."""

    def __init__(self, warmup: int = 50, steps: int = 300) -> None:
        self.warmup, self.steps = warmup, steps
        self.start: Optional[float] = None
        self.seconds: Optional[float] = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps and self.start is not None:
            self.seconds = time.perf_counter() - self.start


def project_fit(case: dict, warmup: int, steps: int, workdir: Path, extra: list[str]) -> tuple[float, "MnistRnnCLI"]:
    """samples/s of `mnist-rnn fit -c <config>` over steady-state steps, as a user runs it."""
    args = [
        "fit",
        "-c", config_file(case["config"]),
        "--trainer.max_steps", str(warmup + steps + 1),
        "--trainer.callbacks+=benchmarks.bench.StepTimer",
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
    # The CLI imports the timer as benchmarks.bench.StepTimer, which is not __main__.StepTimer.
    from benchmarks.bench import StepTimer as ImportedStepTimer

    timer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ImportedStepTimer))
    return steps * case["batch"] / timer.seconds, cli


def _step_loop(batches: Callable[[], tuple[torch.Tensor, torch.Tensor]], hidden: int, warmup: int, steps: int,
               bf16: bool = False, fused: bool = False) -> float:
    """Seconds for `steps` plain PyTorch training steps after `warmup` steps."""
    torch.manual_seed(0)
    rnn, head = nn.LSTM(28, hidden, batch_first=True), nn.Linear(hidden, 10)
    params = [*rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=fused)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        images, labels = batches()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, (h_n, _) = rnn(images)
            logits = head(h_n[-1])
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def handwritten_reference(case: dict, warmup: int, steps: int, raw_root: Path) -> float:
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

    return steps * case["batch"] / _step_loop(batches, case["hidden"], warmup, steps)


def bare_in_memory(case: dict, warmup: int, steps: int, images: torch.Tensor, labels: torch.Tensor, bf16: bool) -> float:
    """samples/s of the same math with no framework: random batches sliced from memory, fused Adam."""
    generator = torch.Generator().manual_seed(0)

    def batches():
        index = torch.randint(0, len(labels), (case["batch"],), generator=generator)
        return images[index], labels[index]

    return steps * case["batch"] / _step_loop(batches, case["hidden"], warmup, steps, bf16=bf16, fused=True)


def torchvision_layout(root: Path) -> Path:
    """The embedded files, uncompressed into torchvision's <root>/MNIST/raw layout."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES.values():
        (raw / name).write_bytes(gzip.decompress((EMBEDDED_DIR / f"{name}.gz").read_bytes()))
    return root


def inference_throughput(model: L.LightningModule, precision: str) -> float:
    """samples/s of Trainer.predict over the 10,000 official test images."""
    dm = MNISTDataModule()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=precision, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    dm.setup("predict")
    start = time.perf_counter()
    trainer.predict(model, datamodule=dm)
    return len(dm.datasets["test"]) / (time.perf_counter() - start)


def predict_files_throughput(ckpt: Path, workdir: Path, count: int) -> float:
    """Image files/s through `mnist-rnn predict --data.predict_path` (in-process, from the
    command line's parsing to the CSV): reading, preprocessing, predicting, writing."""
    from PIL import Image

    folder = workdir / "digits"
    folder.mkdir()
    images, _ = load_split("test")
    for i in range(count):
        # As a user would hand them over: dark ink on light paper, 56 px.
        Image.fromarray(255 - images[i].numpy()).resize((56, 56)).save(folder / f"{i:05d}.png")
    start = time.perf_counter()
    cli_main(["predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(folder),
              "--predictions.output", str(workdir / "predictions.csv")])  # fmt: skip
    return count / (time.perf_counter() - start)


def full_default_fit(config: str, workdir: Path, flags: Optional[list[str]] = None) -> dict:
    """A whole `mnist-rnn fit` in a child process: wall time, peak memory, then its test accuracy."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The child reports its own peak resident memory, VmHWM, which starts afresh at exec.
    # (ru_maxrss would not: it keeps the peak of the forked copy of this bigger process.)
    fit_and_report = (
        "import re, sys\n"
        "from mnist_rnn.cli import main\n"
        "try:\n    main()\n"
        "finally:\n"
        "    status = open('/proc/self/status').read()\n"
        "    print('peak_rss_kb', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    )
    command = [sys.executable, "-c", fit_and_report, "fit", "-c", config_file(config), *(flags or [])]
    start = time.perf_counter()
    fit = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if fit.returncode != 0:
        raise RuntimeError(f"fit failed:\n{fit.stderr[-2000:]}")
    peak_rss_mb = int(re.search(r"^peak_rss_kb (\d+)$", fit.stderr, re.M).group(1)) / 1024
    best = re.search(r"^best checkpoint: (.+)$", fit.stdout, re.M).group(1)
    test = subprocess.run(
        [sys.executable, "-m", "mnist_rnn.cli", "test", "--ckpt_path", best, "--trainer.limit_test_batches", "1.0", *(flags or [])],
        cwd=workdir, env=env, capture_output=True, text=True,
    )  # fmt: skip
    accuracy = float(re.search(r"test/acc\s+([0-9.]+)", test.stdout).group(1))
    return {"config": config, "fit_wall_s": wall, "peak_rss_mb": peak_rss_mb, "test_acc": accuracy}


def run(smoke: bool) -> dict:
    warmup, steps = (2, 5) if smoke else (50, 300)
    seed_steps = (5, 20) if smoke else (200, 2000)
    results: dict = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "native_bf16": native_bf16_cpu(),
            "torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version(),
        },
        "smoke": smoke,
    }  # fmt: skip
    cores = auto_threads(128)
    torch.set_num_threads(cores)
    mm_seconds, mm_n = (0.2, 256) if smoke else (3.0, 1024)
    results["matmul_gflops"] = {"fp32": matmul_gflops(torch.float32, mm_n, mm_seconds)}
    if native_bf16_cpu():
        results["matmul_gflops"]["bf16"] = matmul_gflops(torch.bfloat16, mm_n, mm_seconds)

    dm = MNISTDataModule()
    dm.setup("fit")
    images, labels = dm.datasets["train"].images, dm.datasets["train"].labels
    reps = 1 if smoke else 3
    with tempfile.TemporaryDirectory(prefix="mnist-rnn-bench-") as tmp:
        tmp = Path(tmp)
        raw_root = torchvision_layout(tmp / "torchvision")
        smoke_args = ["--model.hidden_size", "16"] if smoke else []
        for name, case in CASES.items():
            if smoke:
                case = {**case, "hidden": 16}
            w, n = (warmup, steps) if name == "default" else seed_steps
            precision = auto_precision("cpu", case["batch"])
            threads = auto_threads(case["batch"])
            variants = {"project": [], "project_fp32": [], "handwritten": [], "bare": []}
            cli = None
            for rep in range(reps):
                workdir = tmp / f"{name}-{rep}"
                workdir.mkdir()
                rate, cli = project_fit(case, w, n, workdir, smoke_args)
                variants["project"].append(rate)
                if precision != "32-true":
                    (workdir / "fp32").mkdir()
                    rate, _ = project_fit(case, w, n, workdir / "fp32", [*smoke_args, "--trainer.precision", "32-true"])
                    variants["project_fp32"].append(rate)
                torch.set_num_threads(cores)  # what a hand-written script gets by default
                variants["handwritten"].append(handwritten_reference(case, w, n, raw_root))
                torch.set_num_threads(threads)
                variants["bare"].append(bare_in_memory(case, w, n, images, labels, bf16=precision == "bf16-mixed"))
            medians = {k: statistics.median(v) for k, v in variants.items() if v}
            flop = lstm_train_flop_per_sample(case["hidden"])
            peak = results["matmul_gflops"]["bf16" if precision == "bf16-mixed" else "fp32"]
            entry = {
                "hidden": case["hidden"], "batch": case["batch"], "precision": precision, "threads": threads,
                "samples_per_s": medians, "all_runs": variants,
                "speedup_vs_handwritten": medians["project"] / medians["handwritten"],
                "project_vs_bare": medians["project"] / medians["bare"],
                "overhead_ms_per_step": 1e3 * case["batch"] * (1 / medians["project"] - 1 / medians["bare"]),
                "train_mflop_per_sample": flop / 1e6,
                "fraction_of_matmul_peak": medians["project"] * flop / (peak * 1e9),
            }  # fmt: skip
            if "project_fp32" in medians:
                entry["fp32_fraction_of_fp32_peak"] = medians["project_fp32"] * flop / (results["matmul_gflops"]["fp32"] * 1e9)
            if name == "default":
                torch.set_num_threads(threads)
                entry["inference_samples_per_s"] = inference_throughput(cli.model, precision)
                ckpt = next(workdir.glob("runs/*/version_*/checkpoints/last.ckpt"))
                entry["predict_files_per_s"] = predict_files_throughput(ckpt, workdir, 20 if smoke else 1000)
            results[name] = entry
        results["full_fit"] = full_default_fit("tiny.yaml" if smoke else "default.yaml", tmp)
    return results


def report(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, native bf16: {m['native_bf16']}; torch {m['torch']}, lightning {m['lightning']}",
        "matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in results["matmul_gflops"].items()),
        "",
        f"{'model':<28}{'project':>10}{'handwritten':>13}{'speedup':>9}{'bare loop':>11}{'overhead':>10}{'of peak':>9}",
    ]
    for name in CASES:
        e = results[name]
        s = e["samples_per_s"]
        label = f"{name} (H{e['hidden']}, B{e['batch']}, {e['precision']})"
        lines.append(
            f"{label:<28}{s['project']:>10.0f}{s['handwritten']:>13.0f}{e['speedup_vs_handwritten']:>8.2f}x"
            f"{s['bare']:>11.0f}{e['overhead_ms_per_step']:>8.2f}ms{100 * e['fraction_of_matmul_peak']:>8.0f}%"
        )
        if "project_fp32" in s:
            lines.append(
                f"{name + ' forced fp32':<28}{s['project_fp32']:>10.0f}{'':>13}{'':>9}{'':>11}{'':>10}"
                f"{100 * e['fp32_fraction_of_fp32_peak']:>8.0f}%  (of the fp32 peak)"
            )
    lines.append("(samples/s, median of runs; overhead = framework time per step over the bare loop)")
    lines.append(f"inference (Trainer.predict, 10,000 test images): {results['default']['inference_samples_per_s']:.0f} samples/s")
    lines.append(f"predict on PNG files (mnist-rnn predict --data.predict_path, end to end): {results['default']['predict_files_per_s']:.0f} files/s")
    f = results["full_fit"]
    lines.append(
        f"full fit of conf/{f['config']}: {f['fit_wall_s']:.1f} s wall from start, peak RSS {f['peak_rss_mb']:.0f} MB,"
        f" test accuracy {100 * f['test_acc']:.2f}%"
    )
    return "\n".join(lines)


def run_gpu() -> dict:
    """The GPU figures: steady-state samples/s of `mnist-rnn fit` for the default and GPU
    configs on the first CUDA device, then a whole fit of each with its test accuracy."""
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; none is visible")
    results: dict = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "lightning": L.__version__},
    }
    gpu_flags = ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
    with tempfile.TemporaryDirectory(prefix="mnist-rnn-bench-") as tmp:
        for name, config, batch in (("default", "default.yaml", 128), ("gpu", "gpu.yaml", 1024)):
            workdir = Path(tmp) / name
            workdir.mkdir()
            rate, _ = project_fit({"config": config, "batch": batch}, 30, 150 if batch > 512 else 300, workdir, gpu_flags)
            results[name] = {"batch": batch, "samples_per_s": rate, "full_fit": full_default_fit(config, workdir, gpu_flags)}
    return results


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything, to check the benchmark runs")
    parser.add_argument("--gpu", action="store_true", help="the GPU figures instead (needs a CUDA device)")
    parser.add_argument("--json", default=None, help="where to write the figures (default: bench-<time>.json here)")
    args = parser.parse_args(argv)
    out = Path(args.json or f"bench-{datetime.now():%Y%m%d-%H%M%S}.json")
    if out.exists():
        parser.error(f"{out} exists; name another --json file")
    if args.gpu:
        results = run_gpu()
        print(json.dumps(results, indent=2))
    else:
        results = run(args.smoke)
        print(report(results))
    out.write_text(json.dumps(results, indent=2))
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()

"""The GPU check: `python -m benchmarks.gpu_check --out DIR` (add --smoke for a run of seconds on a CPU).

One call on one CUDA GPU, meant to end within 8 minutes (two whole fits of the default and GPU
configs, two budgets of --budget seconds and short steps; not yet timed on a GPU), that writes under DIR:
  gpu_check.json    every figure (rewritten after each step, so a call cut short keeps what ran)
  gpu_check.txt     the same as a short report
  default-best.ckpt the best checkpoint of the default fit, to test on another machine
The steps: the machine (nvidia-smi, torch, CUDA, cuDNN, what `precision: null` picks); `pytest -m
gpu`; `mnist-rnn fit` with the default config and with conf/gpu.yaml (wall time with start-up,
seconds per epoch, samples/s, best val/acc, official test accuracy of the best checkpoint); the
bare cuDNN loop of benchmarks/bench.py at each fit's batch, width and precision (fit / bare); and
conf/smnist.yaml and conf/pmnist.yaml for --budget seconds each (val/acc after every epoch, from the
run's TensorBoard events, and the test accuracy reached). Fits run in this process, as bench.py's
do; a fit's wall time with start-up adds this process's own start-up (interpreter and imports, as
`mnist-rnn` pays them) and its first CUDA call to the fit's own wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import lightning as L
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks.bench import REPO
from benchmarks.loops import bare_in_memory, project_fit, synchronize
from mnist_rnn.commands.cli import config_file
from mnist_rnn.data.datamodule import MNISTDataModule
from mnist_rnn.run.folders import newest_in
from mnist_rnn.run.hardware import auto_precision, cpu_name

JSON, REPORT, CHECKPOINT = "gpu_check.json", "gpu_check.txt", "default-best.ckpt"
# name: (config, steady window: warm-up steps and timed steps, inside the first epoch), in the order they run.
FITS = {
    "default": ("default.yaml", (50, 300)),  # 430 steps an epoch at batch 128
    "gpu": ("gpu.yaml", (10, 40)),  # 54 steps an epoch at batch 1024
    "smnist": ("smnist.yaml", (20, 200)),  # 860 steps an epoch of 784 time steps; --budget seconds in all
    "pmnist": ("pmnist.yaml", (20, 200)),
}
BUDGETED = ("smnist", "pmnist")
BARE = ("default", "gpu")  # the fits the bare loop is run beside
# --smoke: the tiny config's scale on every fit (gpu.yaml's accelerator too, which asks for a GPU). Limits of 2
# batches, not 1: the command line reads "1" as the fraction 1.0, every batch (jsonargparse 4.53.0).
SMOKE_FLAGS = ["--model.hidden_size", "16", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4",
               "--trainer.limit_val_batches", "2", "--data.eval_batch_size", "100", "--trainer.accelerator", "auto",
               "--trainer.limit_test_batches", "2", "--threads", "1"]  # fmt: skip
SMOKE_WINDOW, SMOKE_BUDGET_S = (1, 2), 2
PYTEST_TIMEOUT_S = 120  # of the 8 minutes; a hung gpu test must not eat the budgets of the fits after it
# The keys every fit's entry has (tests/test_gpu_check.py checks them).
FIT_KEYS = ("config", "flags", "device", "precision", "batch", "hidden", "wall_s", "wall_with_startup_s", "epoch_s",
            "steady_samples_per_s", "epoch_samples_per_s", "val_acc_by_epoch", "best_val_acc", "best_checkpoint",
            "test_acc", "test_precision")  # fmt: skip


def process_age() -> Optional[float]:
    """Seconds since this process started (Linux: /proc), None where unknown. Called first thing in main,
    it is the start-up a `mnist-rnn` command pays too: the interpreter and the torch, lightning and mnist_rnn imports."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine(startup: Optional[float]) -> dict:
    smi = shutil.which("nvidia-smi")
    query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    line = subprocess.run([smi, *query], capture_output=True, text=True).stdout.strip() if smi else "no nvidia-smi"
    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.zeros(1, device="cuda")  # the CUDA context, made once per process
        synchronize(torch.device("cuda"))
    return {
        "nvidia_smi": line or "nvidia-smi printed nothing", "device": torch.cuda.get_device_name(0) if cuda else cpu_name(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "lightning": L.__version__, "python": platform.python_version(),
        "precision_null_picks": {"default.yaml": auto_precision("auto", 128), "gpu.yaml": auto_precision("gpu" if cuda else "cpu", 1024)},
        "startup_s": startup, "cuda_init_s": time.perf_counter() - start if cuda else 0.0,
    }  # fmt: skip


def pytest_gpu(run: bool) -> dict:
    """`pytest -m gpu` over the test files that hold a gpu test, in a child process at the repository root;
    with run False (--smoke without CUDA, where every gpu test skips), the command it would run."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-n", "0", "-q", "-p", "no:cacheprovider", *files]
    entry = {"command": shlex.join(["python", *command[1:]]), "returncode": None, "tail": [], "wall_s": None,
             "summary": "not run: --smoke without a CUDA device, where every gpu test skips"}  # fmt: skip
    if not run:
        return entry
    start = time.perf_counter()
    try:
        # The gpu tests are tiny fits; this whole command, skipping them on the 2-core CPU, took 8 to 12 s.
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=PYTEST_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
        lines = [line for line in out.splitlines() if line.strip()]
        return {**entry, "summary": f"stopped after {PYTEST_TIMEOUT_S} s", "tail": lines[-15:], "wall_s": time.perf_counter() - start}
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return {**entry, "returncode": done.returncode, "summary": lines[-1] if lines else "", "tail": lines[-15:],
            "wall_s": time.perf_counter() - start}  # fmt: skip


def max_time(seconds: int) -> str:
    """Lightning's --trainer.max_time for a number of seconds: DD:HH:MM:SS."""
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours // 24:02d}:{hours % 24:02d}:{minutes:02d}:{seconds:02d}"


@contextlib.contextmanager
def inside(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def val_history(log_dir: Path) -> list[float]:
    """val/acc at each validation (one per epoch), read back from the run's TensorBoard event file."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("val/acc")] if "val/acc" in events.Tags()["scalars"] else []


def fit(config: str, window: tuple[int, int], workdir: Path, flags: list[str], info: dict) -> dict:
    """`mnist-rnn fit -c <config> <flags>` in this process, timed by loops.StepTimer, then its best checkpoint tested
    on the official test set by the fit's own Trainer (Trainer.test, as `mnist-rnn test --ckpt_path` would on this machine)."""
    workdir.mkdir(parents=True)
    epochs = yaml.safe_load(Path(config_file(config)).read_text())["trainer"]["max_epochs"]
    start = time.perf_counter()
    timer, cli = project_fit({"config": config, "epochs": epochs}, *window, workdir, flags)
    wall = time.perf_counter() - start
    trainer, ends = cli.trainer, [*timer.epoch_starts[1:], timer.end]
    ckpt = trainer.checkpoint_callback  # the first ModelCheckpoint, on val/acc
    best = workdir / (ckpt.best_model_path or str(newest_in(workdir / ckpt.dirpath)))  # no validation ran: the newest
    entry = {
        "config": config, "flags": flags, "device": str(trainer.strategy.root_device), "precision": str(trainer.precision),
        "batch": cli.datamodule.hparams.batch_size, "hidden": cli.model.hparams.hidden_size,
        "wall_s": wall, "wall_with_startup_s": wall + (info["startup_s"] or 0.0) + info["cuda_init_s"],
        "epoch_s": [e - s for s, e in zip(timer.epoch_starts, ends)],
        "steady_samples_per_s": timer.timed_steps * cli.datamodule.hparams.batch_size / timer.seconds if timer.seconds else None,
        "epoch_samples_per_s": statistics.median(timer.epoch_rates()),
        "val_acc_by_epoch": val_history(workdir / trainer.log_dir),
        "best_val_acc": None if ckpt.best_model_score is None else float(ckpt.best_model_score),
        "best_checkpoint": str(best),
    }  # fmt: skip
    with inside(workdir):
        tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(best), verbose=False)
    entry["test_acc"], entry["test_precision"] = tested[0]["test/acc"], str(trainer.precision)
    del timer, cli, trainer, ckpt
    if torch.cuda.is_available():  # the fit's dataset off the GPU before the next one moves its own there (a CLI holds cycles)
        gc.collect()
        torch.cuda.empty_cache()
    return entry


def bare(entry: dict, images: torch.Tensor, labels: torch.Tensor, smoke: bool) -> dict:
    """bench.py's bare loop (nn.LSTM + nn.Linear + fused Adam, batches indexed from memory; cuDNN on a GPU)
    at a fit's batch, width, precision and device, and the fit's steady rate over it."""
    device = torch.device(entry["device"])
    case, bf16 = {"batch": entry["batch"], "hidden": entry["hidden"]}, entry["precision"].startswith("bf16")
    rate = bare_in_memory(case, *((2, 3) if smoke else (50, 300)), images.to(device), labels.to(device), bf16)
    steady = entry["steady_samples_per_s"]
    return {**case, "precision": entry["precision"], "device": str(device), "samples_per_s": rate,
            "fit_over_bare": steady / rate if steady else None}  # fmt: skip


def guarded(step: Callable[..., dict], *args) -> dict:
    """A step's figures, or the error that stopped it: one failed step must not cost the steps after it their GPU time."""
    try:
        return step(*args)
    except Exception as err:
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"}


def _f(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(r: dict) -> str:
    m = r["machine"]
    lines = [f"mnist-rnn GPU check, {r['date']}{' (--smoke: figures mean nothing)' if r['smoke'] else ''}: {shlex.join(r['command'])}",
             f"device: {m['device']}; nvidia-smi: {m['nvidia_smi']}",
             f"torch {m['torch']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}), lightning {m['lightning']}, Python {m['python']};"
             f" precision: null picks {m['precision_null_picks']}",
             f"start-up: {_f(m['startup_s'], '.1f')} s (interpreter and imports) + {m['cuda_init_s']:.1f} s (first CUDA call)"]  # fmt: skip
    if "pytest_gpu" in r:
        lines.append(f"{r['pytest_gpu']['command']}: {r['pytest_gpu']['summary']} (exit {r['pytest_gpu']['returncode']})")
    for name, e in r.get("fits", {}).items():
        if "error" in e:
            lines.append(f"fit -c {FITS[name][0]}: failed: {e['error']}")
            continue
        budget = f" for {r['budget_s']} s" if name in BUDGETED else ""
        lines.append(f"fit -c {e['config']}{budget} on {e['device']}, {e['precision']}, batch {e['batch']}, LSTM({e['hidden']}):"
                     f" {e['wall_s']:.1f} s ({e['wall_with_startup_s']:.1f} s with start-up), {len(e['epoch_s'])} epochs of"
                     f" {_f(statistics.median(e['epoch_s']), '.1f')} s (median); {_f(e['steady_samples_per_s'], ',.0f')} samples/s"
                     f" steady, {e['epoch_samples_per_s']:,.0f} over whole epochs; best val/acc {_f(e['best_val_acc'], '.4f')};"
                     f" test/acc {e['test_acc']:.4f} ({e['test_precision']})")  # fmt: skip
        if name in BUDGETED:
            lines.append("  val/acc after each epoch: " + ", ".join(f"{v:.4f}" for v in e["val_acc_by_epoch"]))
    for name, b in r.get("bare", {}).items():
        head = f"bare loop beside fit -c {FITS[name][0]}"
        lines.append(f"{head}: failed: {b['error']}" if "error" in b else f"{head} ({b['device']}, {b['precision']}, batch {b['batch']}):"
                     f" {b['samples_per_s']:,.0f} samples/s; fit steady / bare {_f(b['fit_over_bare'], '.2f')}")  # fmt: skip
    if "checkpoint" in r:
        c = r["checkpoint"]
        lines.append(f"{c['file']}: test/acc {c['test_acc']:.4f} here ({c['test_precision']}); on another machine:"
                     f" {c['check_with']} (a CPU without bf16 tests it in 32-true and says so)")  # fmt: skip
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    startup = process_age()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help=f"folder for {JSON}, {REPORT} and {CHECKPOINT} (made if missing)")
    parser.add_argument("--smoke", action="store_true", help="every step in seconds, on a CPU too: checks that the script runs")
    parser.add_argument("--budget", type=int, default=None, help="seconds of training of smnist.yaml and of pmnist.yaml each (default 120)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if (out / JSON).exists():
        parser.error(f"--out {out} holds a {JSON} already; name another folder")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("needs a CUDA device, and torch sees none; pass --smoke to check the script on a CPU")
    budget = args.budget if args.budget is not None else SMOKE_BUDGET_S if args.smoke else 120
    if budget < 1:
        parser.error(f"--budget must be at least 1 second, got {budget}")
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": datetime.now().isoformat(timespec="seconds"), "smoke": args.smoke, "budget_s": budget,
                     "command": ["python", "-m", "benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)]}  # fmt: skip

    def save() -> None:
        (out / JSON).write_text(json.dumps(results, indent=2))
        (out / REPORT).write_text(report(results) + "\n")

    results["machine"] = machine(startup)
    save()
    results["pytest_gpu"] = pytest_gpu(run=not args.smoke or torch.cuda.is_available())
    save()
    dm = MNISTDataModule()
    dm.setup("fit")
    train = dm.datasets["train"]
    results["fits"], results["bare"] = {}, {}
    with tempfile.TemporaryDirectory(prefix="mnist-rnn-gpu-check-") as tmp:
        for name, (config, window) in FITS.items():
            flags = ["--trainer.max_time", max_time(budget)] if name in BUDGETED else []
            flags += SMOKE_FLAGS if args.smoke else []
            window = SMOKE_WINDOW if args.smoke else window
            results["fits"][name] = entry = guarded(fit, config, window, Path(tmp) / name, flags, results["machine"])
            if name == "default" and "error" not in entry:
                shutil.copyfile(entry["best_checkpoint"], out / CHECKPOINT)
                check = f"mnist-rnn test --ckpt_path {out / CHECKPOINT} --trainer.accelerator cpu"
                results["checkpoint"] = {"file": CHECKPOINT, "test_acc": entry["test_acc"], "test_precision": entry["test_precision"],
                                         "check_with": check}  # fmt: skip
            if name in BARE and "error" not in entry:  # right after its fit, so that a call cut short keeps the pair
                results["bare"][name] = guarded(bare, entry, train.images, train.labels, args.smoke)
            save()
    print(report(results))
    return results


def failed(results: dict) -> list[str]:
    return [f"{kind} {name}" for kind in ("fits", "bare") for name, e in results[kind].items() if "error" in e]


if __name__ == "__main__":
    sys.exit(1 if failed(main()) else 0)

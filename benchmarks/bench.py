"""The speed benchmark: `python -m benchmarks.bench` (add --smoke for a run of seconds).

Like for like, on the same data and model settings: the project's real training path
(`mnist-rnn fit` through LightningCLI, with the default logging, metrics, checkpoints and
dashboards) against the script people write by hand (torchvision's MNIST with per-sample
ToTensor/Normalize, a DataLoader, nn.LSTM + nn.Linear, Adam) in the same precision (fp32 with
fp32, bf16 with the hand-written loop under `torch.autocast`), each side at its best thread
count; a bare in-memory loop as the floor of framework cost; the seed model against the seed
notebook's own TF1 graph (with --anchor-python); time to 99% test accuracy of whole fits; peak
memory of every config; the matrix-multiply peak, inference and predict on files.
It prints a table that says what each column holds, and writes the same figures as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from benchmarks.accounting import profiled_epoch, table
from benchmarks.loops import CASES, bare_in_memory, handwritten_reference, project_fit
from mnist_rnn.commands.cli import cli_main, config_file
from mnist_rnn.data.datamodule import MNISTDataModule
from mnist_rnn.data.mnist_files import EMBEDDED_DIR, IDX_FILES, load_split
from mnist_rnn.run.hardware import cores, cpu_kernel_runs, cpu_name, missing_feature, native_bf16_cpu

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("throughput", "anchor", "time99", "memory", "extras")
THREADS = (1, 2)  # each side is measured at both; the table shows each side's faster one

# The recipes the time-to-99% section compares by default: the pinned 2026-11-30 recipe and today's.
TIME99_CONFIGS = ("default-v1.yaml", "default.yaml")

# Every bundled config whose peak memory the benchmark checks (best.yaml is allowed more).
MEMORY_CONFIGS = ("default.yaml", "default-v1.yaml", "seed.yaml", "tiny.yaml", "smnist.yaml", "pmnist.yaml", "gpu.yaml")


def lstm_train_flop_per_sample(hidden: int, steps: int = 28, inputs: int = 28) -> float:
    """Matrix FLOP of one training sample: 4 gates x (input + hidden) x hidden multiply-adds
    per time step forward, and about twice that again backward."""
    forward = steps * 2 * 4 * hidden * (inputs + hidden)
    return 3 * forward


def bf16_not_applicable() -> Optional[str]:
    """Why bf16 rows cannot be measured on this CPU, or None where they can: without native bf16 the
    LSTM has no bf16-mixed kernel here, and emulated bf16 would compare nothing like with like."""
    if native_bf16_cpu() and cpu_kernel_runs("lstm", "bf16-mixed"):
        return None
    return f"not applicable: this CPU ({cpu_name()}) has no {missing_feature('bf16')}"


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


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


# A fit in a child process that reports its own peak resident memory, VmHWM, which starts
# afresh at exec (ru_maxrss would not: it keeps the peak of the forked copy of this process).
_FIT_AND_REPORT = (
    "import re, sys\n"
    "from mnist_rnn.commands import main\n"
    "try:\n    main()\n"
    "finally:\n"
    "    status = open('/proc/self/status').read()\n"
    "    print('peak_rss_kb', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
)


def _child_fit(config: str, workdir: Path, flags: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds from start, peak RSS in MB, the finished process) of `mnist-rnn fit -c config`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A file of your own (the child runs in workdir, hence absolute), or a bundled config.
    path = os.path.abspath(config) if os.path.isfile(config) else config_file(config)
    command = [sys.executable, "-c", _FIT_AND_REPORT, "fit", "-c", path, *flags]
    start = time.perf_counter()
    fit = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if fit.returncode != 0:
        raise RuntimeError(f"fit -c {config} failed:\n{fit.stderr[-2000:]}")
    peak_rss_mb = int(re.search(r"^peak_rss_kb (\d+)$", fit.stderr, re.M).group(1)) / 1024
    return wall, peak_rss_mb, fit


def full_fit(config: str, workdir: Path, flags: Optional[list[str]] = None, test_flags: Optional[list[str]] = None) -> dict:
    """A whole `mnist-rnn fit` in a child process: wall time from start (start-up included), peak
    memory, then the official test accuracy of its best checkpoint (tested with test_flags)."""
    flags = flags or []
    wall, peak_rss_mb, fit = _child_fit(config, workdir, flags)
    best = re.search(r"^best checkpoint: (.+)$", fit.stdout, re.M).group(1)
    test = subprocess.run(
        [sys.executable, "-m", "mnist_rnn", "test", "--ckpt_path", best, "--trainer.limit_test_batches", "1.0", *(test_flags or [])],
        cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    accuracy = float(re.search(r"test/acc\s+([0-9.]+)", test.stdout).group(1))
    return {"config": config, "flags": flags, "fit_wall_s": wall, "peak_rss_mb": peak_rss_mb, "test_acc": accuracy}


def time_to_99(configs: list[str], seeds: list[int], workdir: Path, flags: list[str]) -> dict:
    """Whole fits of each config for each seed, the configs taking turns within each seed (so that
    a change in the machine's load falls on all of them): wall time to the end of the fit and
    whether its best checkpoint reached 99.0% on the official test set."""
    runs: dict = {config: [] for config in configs}
    for seed in seeds:
        for index, config in enumerate(configs):
            name, *own_flags = shlex.split(config)  # "default-v1.yaml --trainer.max_epochs 4": a config and flags
            folder = workdir / f"{index}-{Path(name).stem}-seed{seed}"
            folder.mkdir(parents=True)
            runs[config].append({"seed": seed, **full_fit(name, folder, [f"--seed_everything={seed}", *own_flags, *flags])})
            print(f"time99 {config} seed {seed}: {runs[config][-1]['fit_wall_s']:.1f} s,"
                  f" test accuracy {runs[config][-1]['test_acc']:.4f}", file=sys.stderr, flush=True)  # fmt: skip
    out: dict = {}
    for config, done in runs.items():
        out[config] = {
            "runs": done,
            "median_wall_s": statistics.median(r["fit_wall_s"] for r in done),
            "all_reached_99": all(r["test_acc"] >= 0.99 for r in done),
            "min_test_acc": min(r["test_acc"] for r in done),
        }
    return out


def peak_memory(configs: tuple[str, ...], workdir: Path, train_batches: int) -> dict:
    """Peak resident memory of a short fit of each config in a child process on the CPU:
    `train_batches` training batches and 2 validation batches at the config's own batch sizes."""
    out = {}
    for config in configs:
        folder = workdir / f"memory-{Path(config).stem}"
        folder.mkdir(parents=True)
        flags = [
            "--trainer.max_epochs", "1", "--trainer.max_steps", "-1",
            "--trainer.limit_train_batches", str(train_batches), "--trainer.limit_val_batches", "2",
            "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.num_sanity_val_steps", "0", "--threads", "1",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1",  # gpu.yaml too: the host's memory
        ]  # fmt: skip
        _, peak, _ = _child_fit(config, folder, flags)
        out[config] = peak
    return out


def _wall(command: list[str], cwd: Path, env: Optional[dict] = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-2000:]}")
    return wall, done.stdout


def seed_side_by_side(workdir: Path, data_root: Path, short: int, long: int, reps: int, extra: list[str],
                      anchor_python: Optional[str], anchor_script: Path) -> dict:
    """The seed model through a whole `mnist-rnn fit -c seed.yaml` child process, and (with
    anchor_python) the seed notebook's TF1 graph, one after the other, `reps` times:
    samples/s = (wall of `long` steps - wall of `short` steps) x 10 / (long - short), so start-up
    cancels and everything a run does per step (validation, checkpoints, logging) counts."""
    out: dict = {"steps": [short, long], "project": [], "tf1": []}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for rep in range(reps):
        walls = {}
        for n in (short, long):
            folder = workdir / f"seed-{rep}-{n}"
            folder.mkdir(parents=True)
            cmd = [sys.executable, "-m", "mnist_rnn", "fit", "-c", config_file("seed.yaml"),
                   "--trainer.max_steps", str(n), *extra]  # fmt: skip
            walls[n], _ = _wall(cmd, folder, env)
        out["project"].append((long - short) * 10 / (walls[long] - walls[short]))
        print(f"anchor repetition {rep}: mnist-rnn fit {out['project'][-1]:,.0f} samples/s", file=sys.stderr, flush=True)
        if anchor_python:
            walls = {}
            for n in (short, long):
                walls[n], stdout = _wall([anchor_python, str(anchor_script), str(data_root), "--iters", str(n)], workdir)
                out.setdefault("tf1_test_acc", json.loads(stdout.strip().splitlines()[-1])["test_acc"])
            out["tf1"].append((long - short) * 10 / (walls[long] - walls[short]))
            print(f"anchor repetition {rep}: TF1 graph {out['tf1'][-1]:,.0f} samples/s", file=sys.stderr, flush=True)
    out["project_median"] = statistics.median(out["project"])
    if out["tf1"]:
        out["tf1_median"] = statistics.median(out["tf1"])
        # Ratios within each repetition, then their median: both sides saw the same load.
        out["ratio_median"] = statistics.median(p / t for p, t in zip(out["project"], out["tf1"]))
    return out


def throughput(name: str, case: dict, reps: int, smoke: bool, tmp: Path, raw_root: Path,
               images: torch.Tensor, labels: torch.Tensor, peak_gflops: dict) -> dict:
    """The like-for-like rows of one model: for each precision, the project (steady state and
    whole epochs), the hand-written loop and the bare loop, each at 1 and at 2 threads."""
    warmup, steps = case.get("smoke_steady", (2, 5)) if smoke else case["steady"]
    extra = ["--model.hidden_size", str(case["hidden"])]
    if smoke:
        extra += ["--trainer.limit_train_batches", "10", "--trainer.limit_val_batches", "2"]
    rows: dict = {}
    cli = workdir = None
    for precision in case["precisions"]:
        bf16 = precision == "bf16-mixed"
        if bf16 and bf16_not_applicable():
            rows[precision] = {"precision": precision, "not_applicable": bf16_not_applicable()}
            continue
        runs: dict = {k: {t: [] for t in THREADS} for k in ("project", "project_epochs", "handwritten", "bare")}
        for rep in range(reps):
            for t in THREADS:
                workdir = tmp / f"{name}-{precision}-{t}-{rep}"
                workdir.mkdir()
                timer, cli = project_fit(case, warmup, steps, workdir, [*extra, "--trainer.precision", precision, "--threads", str(t)])
                runs["project"][t].append(timer.timed_steps * case["batch"] / timer.seconds)
                if case.get("epochs"):  # whole epochs only: a max_steps run ends inside its first epoch
                    runs["project_epochs"][t].append(statistics.median(timer.epoch_rates()))
                torch.set_num_threads(t)
                runs["handwritten"][t].append(handwritten_reference(case, warmup, steps, raw_root, bf16))
                runs["bare"][t].append(bare_in_memory(case, warmup, steps, images, labels, bf16, case.get("recipe", False)))
        medians = {k: {t: statistics.median(v) for t, v in by_t.items() if v} for k, by_t in runs.items()}
        best = {k: max(m.items(), key=lambda item: item[1]) for k, m in medians.items() if m}  # (threads, samples/s)
        flop = lstm_train_flop_per_sample(case["hidden"])
        peak = peak_gflops.get("bf16" if bf16 else "fp32")
        row = {
            "precision": precision, "runs": runs, "medians": medians,
            "best": {k: {"threads": t, "samples_per_s": r} for k, (t, r) in best.items()},
            "project_vs_handwritten": best["project"][1] / best["handwritten"][1],
            "project_vs_bare": best["project"][1] / best["bare"][1],
            "overhead_ms_per_step": 1e3 * case["batch"] * (1 / best["project"][1] - 1 / best["bare"][1]),
            "fraction_of_matmul_peak": best["project"][1] * flop / (peak * 1e9) if peak else None,
        }  # fmt: skip
        if "project_epochs" in best:
            row["project_epochs_vs_handwritten"] = best["project_epochs"][1] / best["handwritten"][1]
            row["project_epochs_vs_bare"] = best["project_epochs"][1] / best["bare"][1]
            # Where the epoch's time goes (benchmarks/accounting.py), at the fit's faster thread count.
            profiled = tmp / f"{name}-{precision}-profiled"
            profiled.mkdir()
            smoke_case = {**case, "steady": (warmup, steps)}
            row["accounting"] = profiled_epoch(precision, best["project_epochs"][0], profiled, images, labels, smoke_case, tuple(extra))
        rows[precision] = row
    return {"hidden": case["hidden"], "batch": case["batch"], "rows": rows, "_cli": cli, "_workdir": workdir}


def run(smoke: bool, sections: tuple[str, ...] = SECTIONS, reps: Optional[int] = None, seeds: int = 1,
        anchor_python: Optional[str] = None, anchor_script: Optional[Path] = None,
        time99_configs: tuple[str, ...] = TIME99_CONFIGS) -> dict:
    reps = reps or (1 if smoke else 3)
    results: dict = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(), "cores": cores(), "native_bf16": native_bf16_cpu(),
            "torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version(),
        },
        "load_at_start": load(),
        "smoke": smoke, "reps": reps, "sections": list(sections),
    }  # fmt: skip
    torch.set_num_threads(max(THREADS))
    mm_seconds, mm_n = (0.2, 256) if smoke else (3.0, 1024)
    results["matmul_gflops"] = {"fp32": matmul_gflops(torch.float32, mm_n, mm_seconds)}
    if not bf16_not_applicable():
        results["matmul_gflops"]["bf16"] = matmul_gflops(torch.bfloat16, mm_n, mm_seconds)

    dm = MNISTDataModule()
    dm.setup("fit")
    images, labels = dm.datasets["train"].images, dm.datasets["train"].labels
    with tempfile.TemporaryDirectory(prefix="mnist-rnn-bench-") as tmp:
        tmp = Path(tmp)
        raw_root = torchvision_layout(tmp / "torchvision")
        if "throughput" in sections:
            results["throughput"] = {}
            for name, case in CASES.items():
                case = {**case, "hidden": 16} if smoke else case
                entry = throughput(name, case, reps, smoke, tmp, raw_root, images, labels, results["matmul_gflops"])
                cli, workdir = entry.pop("_cli"), entry.pop("_workdir")
                if name == "default" and "extras" in sections:
                    torch.set_num_threads(max(THREADS))
                    entry["inference_samples_per_s"] = inference_throughput(cli.model, cli.trainer.precision)
                    ckpt = next(workdir.glob("runs/*/version_*/checkpoints/last.ckpt"))
                    entry["predict_files_per_s"] = predict_files_throughput(ckpt, workdir, 20 if smoke else 1000)
                results["throughput"][name] = entry
        if "anchor" in sections:
            short, long = (20, 60) if smoke else (1000, 5000)  # a 40,000-sample window: the TF1 start-up alone varies by a second or more
            extra = ["--model.hidden_size", "16"] if smoke else []
            results["anchor"] = seed_side_by_side(
                tmp / "anchor", raw_root, short, long, reps, extra, anchor_python,
                anchor_script or REPO.parent / "shared" / "anchors" / "seed_tf1.py",
            )  # fmt: skip
        if "time99" in sections:
            configs = ["tiny.yaml"] if smoke else list(time99_configs)
            results["time99"] = time_to_99(configs, list(range(42, 42 + seeds)), tmp / "time99", [])
        if "memory" in sections:
            configs = ("tiny.yaml", "seed.yaml") if smoke else MEMORY_CONFIGS
            results["peak_memory_mb"] = peak_memory(configs, tmp / "memory", 2 if smoke else 5)
    results["load_at_end"] = load()
    return results


COLUMNS = """\
columns (samples/s are medians over the repetitions; [n] = the thread count that was faster for that side):
  project steady   mnist-rnn fit in this process, training steps only: a window of steps after warm-up
                   with no validation, dashboards or checkpoint writes in it (still the default logging,
                   metrics and callbacks on every step)
  project epochs   mnist-rnn fit over one whole epoch (430 steps for the default model, warm-up included):
                   the wall time from the epoch's start to the end of training, so its validation,
                   dashboards and checkpoint writes count (seed: see the side-by-side rows below,
                   whose runs are shorter than an epoch)
  hand-written     torchvision MNIST + per-sample ToTensor/Normalize + DataLoader + nn.LSTM/nn.Linear +
                   Adam, same precision (bf16: the forward pass under torch.autocast("cpu", bfloat16))
  ratio            project steady / hand-written, each at its own best thread count
  bare loop        the same math with no framework: batches indexed from memory, fused Adam; for the
                   default model the recipe's whole step (1-pixel shift, clipping, the weight average)
  overhead         framework time per step: batch x (1/project steady - 1/bare loop), in ms
  of peak          project steady x training FLOP per sample / torch.mm peak of the same dtype
  fit / bare loop  (the line under each row) project steady / bare loop and project epochs / bare loop,
                   each at its best thread count; the issue-31 targets are 0.95 steady and 0.90 epochs"""


def _fmt_best(best: dict, key: str) -> str:
    if key not in best:
        return "-"
    return f"{best[key]['samples_per_s']:,.0f} [{best[key]['threads']}]"


def report(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, native bf16: {m['native_bf16']}; torch {m['torch']},"
        f" lightning {m['lightning']}; {results['date']}",
        f"load average (1, 5, 15 min): {results['load_at_start']} at start, {results['load_at_end']} at end",
        "matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in results["matmul_gflops"].items()),
    ]
    if "throughput" in results:
        lines += ["", COLUMNS, ""]
        header = (f"{'model':<30}{'project steady':>17}{'project epochs':>17}{'hand-written':>15}{'ratio':>7}"
                  f"{'bare loop':>15}{'overhead':>10}{'of peak':>9}")  # fmt: skip
        lines.append(header)
        for name, entry in results["throughput"].items():
            for precision, row in entry["rows"].items():
                label = f"{name} H{entry['hidden']} B{entry['batch']} {'bf16' if 'bf16' in precision else 'fp32'}"
                if "not_applicable" in row:
                    lines.append(f"{label:<30}{row['not_applicable']}")
                    continue
                b = row["best"]
                peak = row["fraction_of_matmul_peak"]
                lines.append(
                    f"{label:<30}{_fmt_best(b, 'project'):>17}{_fmt_best(b, 'project_epochs'):>17}"
                    f"{_fmt_best(b, 'handwritten'):>15}{row['project_vs_handwritten']:>6.2f}x"
                    f"{_fmt_best(b, 'bare'):>15}{row['overhead_ms_per_step']:>8.2f}ms"
                    f"{'' if peak is None else f'{100 * peak:.0f}%':>9}"
                )
                epochs = f", whole epochs {row['project_epochs_vs_bare']:.2f}x" if "project_epochs_vs_bare" in row else ""
                lines.append(f"{'':<30}fit / bare loop: steady {row['project_vs_bare']:.2f}x{epochs}")
        for name, entry in results["throughput"].items():
            for row in entry["rows"].values():
                if "accounting" in row:
                    lines += ["", f"{name}: where one profiled epoch's time goes (benchmarks/accounting.py)", table(row["accounting"])]
        d = results["throughput"]["default"]
        if "inference_samples_per_s" in d:
            lines.append("inference (Trainer.predict, 10,000 test images, bf16 where auto picks it):"
                         f" {d['inference_samples_per_s']:,.0f} samples/s")
            lines.append("predict on PNG files (mnist-rnn predict --data.predict_path, end to end):"
                         f" {d['predict_files_per_s']:,.0f} files/s")
    if "anchor" in results:
        a = results["anchor"]
        short, long = a["steps"]
        lines += ["", f"seed model side by side: samples/s = (wall of {long} steps - wall of {short} steps) x 10 / {long - short},"
                  " each a whole child process (start-up cancels; validation and checkpoints count)"]  # fmt: skip
        lines.append(f"  mnist-rnn fit -c seed.yaml (fp32, 1 thread): {a['project_median']:,.0f} samples/s  (runs: "
                     + ", ".join(f"{r:,.0f}" for r in a["project"]) + ")")
        if "tf1_median" in a:
            lines.append(f"  seed notebook's TF1 graph (seed_tf1.py):    {a['tf1_median']:,.0f} samples/s  (runs: "
                         + ", ".join(f"{r:,.0f}" for r in a["tf1"]) + ")")
            lines.append(f"  project / TF1: {a['ratio_median']:.2f}x (median of the per-repetition ratios)")
        else:
            lines.append("  (TF1 graph not measured: pass --anchor-python, see docs/speed.md)")
    if "time99" in results:
        lines += ["", "time to 99%: wall of a whole `mnist-rnn fit` child process from start (start-up included),"
                  " then the official test accuracy of its best checkpoint"]  # fmt: skip
        for config, t in results["time99"].items():
            accs = ", ".join(f"{100 * r['test_acc']:.2f}%" for r in t["runs"])
            walls = ", ".join(f"{r['fit_wall_s']:.1f}" for r in t["runs"])
            lines.append(f"  {config:<18} median {t['median_wall_s']:.1f} s (runs: {walls} s); test accuracy {accs};"
                         f" all >= 99.0%: {t['all_reached_99']}")
        first, *others = results["time99"]
        for config in others:
            pairs = zip(results["time99"][first]["runs"], results["time99"][config]["runs"])
            ratios = [b["fit_wall_s"] / a["fit_wall_s"] for a, b in pairs]
            lines.append(f"  {config} / {first}: {statistics.median(ratios):.2f}x (median of the per-seed ratios)")
    if "peak_memory_mb" in results:
        lines += ["", "peak resident memory (VmHWM of a child `mnist-rnn fit`: a few training batches and 2 validation"
                  " batches at the config's batch sizes):"]  # fmt: skip
        lines.append("  " + ", ".join(f"{c} {mb:,.0f} MB" for c, mb in results["peak_memory_mb"].items()))
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
            steps = 150 if batch > 512 else 300
            timer, _ = project_fit({"config": config, "batch": batch}, 30, steps, workdir, gpu_flags)
            results[name] = {"batch": batch, "samples_per_s": timer.timed_steps * batch / timer.seconds,
                             "full_fit": full_fit(config, workdir, gpu_flags, gpu_flags)}  # fmt: skip
    return results


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few steps of everything, to check the benchmark runs")
    parser.add_argument("--gpu", action="store_true", help="the GPU figures instead (needs a CUDA device)")
    parser.add_argument("--json", default=None, help="where to write the figures (default: bench-<time>.json here)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each timing (default 3; smoke 1)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of each whole fit in the time-to-99%% section (the target needs 5)")
    parser.add_argument("--anchor-python", default=None,
                        help="a Python with tensorflow-cpu and tf_keras (its own venv) to run the seed notebook's TF1 graph")  # fmt: skip
    parser.add_argument("--anchor-script", default=None, help="seed_tf1.py (default: ../shared/anchors/seed_tf1.py)")
    parser.add_argument("--time99-configs", default=",".join(TIME99_CONFIGS),
                        help="comma-separated configs (bundled names or YAML files, each optionally followed by"
                        " flags) the time-to-99%% section compares, the first being the reference")  # fmt: skip
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r} in --only; choose from {', '.join(SECTIONS)}")
    if args.reps is not None and args.reps < 1 or args.seeds < 1:
        parser.error("--reps and --seeds must be at least 1")
    out = Path(args.json or f"bench-{datetime.now():%Y%m%d-%H%M%S}.json")
    if out.exists():
        parser.error(f"{out} exists; name another --json file")
    if args.gpu:
        results = run_gpu()
        print(json.dumps(results, indent=2))
    else:
        script = Path(args.anchor_script) if args.anchor_script else None
        time99 = tuple(c.strip() for c in args.time99_configs.split(",") if c.strip())
        results = run(args.smoke, sections, args.reps, args.seeds, args.anchor_python, script, time99)
        print(report(results))
    out.write_text(json.dumps(results, indent=2))
    print(f"figures written to {out}")


if __name__ == "__main__":
    main()

"""Multi-process DDP on CPU (gloo), through the CLI, as a user would launch it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

REPO = Path(__file__).resolve().parent.parent


def fit(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mnist_rnn.cli", "fit", "-c", TINY, "--trainer.accelerator", "cpu", *flags],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def best_val_acc(stdout: str) -> float:
    return float(re.search(r"^best val/acc: ([0-9.]+)$", stdout, re.M).group(1))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    result = fit(
        cwd, "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "64",
        "--trainer.callbacks+=tests.helpers.RecordTrainingSamples", f"--trainer.callbacks.out_dir={cwd / 'seen'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_each_rank_sees_a_disjoint_half(ddp_run):
    cwd, _ = ddp_run
    rank0, rank1 = (torch.load(cwd / "seen" / f"rank{r}.pt") for r in (0, 1))
    assert len(rank0) == len(rank1) == 20 * 64  # limit_train_batches x per-rank batch
    shared = set(rank0.tolist()) & set(rank1.tolist())
    assert not shared


def test_only_rank_zero_writes_one_run(ddp_run):
    cwd, result = ddp_run
    assert [p.name for p in (cwd / "runs" / "tiny").iterdir()] == ["version_0"]
    run = cwd / "runs" / "tiny" / "version_0"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert result.stdout.count("best checkpoint:") == 1


def test_matches_a_single_process_run_of_the_same_global_batch(ddp_run, tmp_path):
    _, ddp = ddp_run
    single = fit(tmp_path, "--trainer.devices", "1", "--data.batch_size", "128")
    assert single.returncode == 0, single.stderr[-3000:]
    # Same seed, same global batch, same number of steps; only the data order differs.
    assert abs(best_val_acc(ddp.stdout) - best_val_acc(single.stdout)) < 0.08


@pytest.mark.gpu
def test_gpu_fit_keeps_the_dataset_on_the_device(tmp_path):
    from tests.conftest import run_cli

    cli, _ = run_cli("fit", "-c", TINY, "--trainer.accelerator", "gpu", "--trainer.devices", "1", cwd=tmp_path)
    assert cli.datamodule.datasets["train"].images.device.type == "cuda"
    assert cli.trainer.precision in ("bf16-mixed", "32-true")
    assert cli.trainer.callback_metrics["val/acc"].item() > 0.15

"""Shared fixtures: tiny CLI runs in temporary folders, and MNIST-format files written by the tests."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import struct
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from mnist_rnn.commands import main
from mnist_rnn.commands.cli import cli_main, config_file
from mnist_rnn.data import mnist_files

TINY = config_file("tiny.yaml")
REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path):
    """Run the mnist-rnn CLI in-process inside cwd; return (cli, captured stdout)."""
    out = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            cli = cli_main(list(args))
    finally:
        os.chdir(old)
    return cli, out.getvalue()


def subprocess_env() -> dict:
    """The environment for a CLI subprocess that can import this repository's tests package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def cli_error(capsys, *args: str) -> str:
    """Run the CLI's main() in this process, expecting a clean refusal; return its one-line message.

    A clean refusal exits with status 2 and prints exactly one `mnist-rnn: error: ...` line, no traceback.
    """
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("mnist-rnn")]
    assert len(lines) == 1 and lines[0].startswith("mnist-rnn: error: "), err
    return lines[0].removeprefix("mnist-rnn: error: ")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny `fit` (a few seconds), shared by the tests that only read what it left."""
    cwd = tmp_path_factory.mktemp("tiny_fit")
    cli, stdout = run_cli("fit", "-c", TINY, cwd=cwd)
    return {"cwd": cwd, "cli": cli, "stdout": stdout, "run_dir": cwd / "runs" / "tiny" / "version_0"}


def run_main(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run the `mnist-rnn` command in-process inside cwd, as from a shell: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
        status = 0
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else 1
    finally:
        os.chdir(old)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of the default model at hidden size 64 after 400 batches: about 95% accurate, in seconds."""
    cwd = tmp_path_factory.mktemp("trained")
    cli, _ = run_cli(
        "fit", "--model.hidden_size", "64", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "400",
        "--threads", "1", cwd=cwd,  # one thread: two collapse when another process is busy on the cores
    )
    return cwd / cli.trainer.checkpoint_callback.best_model_path

@pytest.fixture
def embedded_copy(tmp_path, monkeypatch):
    """A writable copy of the embedded files, used in place of the package's."""
    copy = tmp_path / "embedded"
    shutil.copytree(mnist_files.EMBEDDED_DIR, copy)
    monkeypatch.setattr(mnist_files, "EMBEDDED_DIR", copy)
    return copy


def write_idx(path: Path, tensor: torch.Tensor) -> None:
    """Write a uint8 tensor in the IDX format MNIST uses (gzip-compressed when path ends in .gz)."""
    header = struct.pack(">I", 0x0800 + tensor.dim()) + b"".join(struct.pack(">I", n) for n in tensor.shape)
    payload = header + tensor.to(torch.uint8).contiguous().numpy().tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_fake_mnist(folder: Path, n_train: int = 300, n_test: int = 50, gz: bool = False, seed: int = 0) -> dict:
    """A small MNIST-format dataset whose labels can be read off the images (class k lights row 2k)."""
    gen = torch.Generator().manual_seed(seed)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = torch.randint(0, 40, (n, 28, 28), generator=gen)
        images[torch.arange(n), 2 * labels + 4] = 255
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
        data[split] = (images.to(torch.uint8), labels)
    return data


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped, with the reason shown, where no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# The guard of the suite's time (issue 29): every run prints its wall time, its time by file and each test over
# SLOW_TEST_SECONDS (setup, call and teardown together), so that the next slow test is seen when it is added.
# A report, never a failure: a busy machine must not turn a run red. 5 s: the budget for a default test.
SLOW_TEST_SECONDS = 5.0
_seconds: dict[str, float] = defaultdict(float)
_started = time.monotonic()


def pytest_runtest_logreport(report):
    _seconds[report.nodeid] += report.duration  # under pytest-xdist the workers' reports arrive here too


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _seconds:
        return
    write = terminalreporter.write_line
    by_file: dict[str, float] = defaultdict(float)
    for nodeid, seconds in _seconds.items():
        by_file[nodeid.split("::")[0]] += seconds
    terminalreporter.section("time")
    write(f"{time.monotonic() - _started:.0f} s wall for {len(_seconds)} tests, {sum(_seconds.values()):.0f} s of test time")
    write("by file: " + ", ".join(f"{Path(f).stem} {s:.0f} s" for f, s in sorted(by_file.items(), key=lambda x: -x[1])))
    slow = sorted(((s, n) for n, s in _seconds.items() if s > SLOW_TEST_SECONDS), reverse=True)
    write(f"{len(slow)} tests over {SLOW_TEST_SECONDS:.0f} s" + (":" if slow else ""))
    for seconds, nodeid in slow:
        write(f"  {seconds:5.1f} s  {nodeid}")

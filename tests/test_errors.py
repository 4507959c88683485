"""Every bad input ends in one line that names the culprit and the fix, before any training, with no stack trace.

Bad checkpoints are in test_checkpoints.py and an unwritable output folder in test_runs.py; these
are the dataset and the settings. Each runs the CLI's main() in this process (test_cli.py runs
some as real processes).
"""

import gzip
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY, cli_error, write_fake_mnist


def _alter_a_label(folder: Path) -> None:
    path = folder / "train-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(path.read_bytes()))
    content[100] = (content[100] + 1) % 10  # still a valid IDX file, but no longer MNIST's
    path.write_bytes(gzip.compress(bytes(content)))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


EMBEDDED = {
    "altered": (
        _alter_a_label,
        r"train-labels-idx1-ubyte\.gz: content MD5 is \w+, expected \w+; the file is altered or truncated,"
        r" reinstall mnist-rnn to restore it",
    ),
    "truncated": (
        lambda folder: _truncate(folder / "train-images-idx3-ubyte.gz"),
        r"train-images-idx3-ubyte\.gz: cannot be decompressed \(.*\); the file is truncated or corrupted, replace it",
    ),
    "missing": (
        lambda folder: (folder / "train-labels-idx1-ubyte.gz").unlink(),
        r"train-labels-idx1-ubyte\.gz: file is missing",
    ),
}


@pytest.mark.parametrize("damage,message", EMBEDDED.values(), ids=EMBEDDED.keys())
def test_a_damaged_embedded_dataset_file(embedded_copy, tmp_path, monkeypatch, capsys, damage, message):
    damage(embedded_copy)
    monkeypatch.chdir(tmp_path)
    assert re.search(message, cli_error(capsys, "fit", "-c", TINY))
    assert not list(tmp_path.glob("runs/**/*.ckpt"))


DATA_DIR = {
    "truncated_file": (
        lambda folder: _truncate(folder / "train-images-idx3-ubyte"),
        r"^data/train-images-idx3-ubyte: not a valid MNIST-format IDX images file",
    ),
    "missing_file": (
        lambda folder: (folder / "train-labels-idx1-ubyte").unlink(),
        r"^--data\.data_dir data lacks train-labels-idx1-ubyte; expected .*; add --data\.download true to fetch MNIST$",
    ),
    "no_idx_files": (_empty, r"^--data\.data_dir data holds no MNIST-format IDX files"),
    "no_such_folder": (
        shutil.rmtree,
        r"^--data\.data_dir data does not exist; point it at a folder of MNIST-format IDX files, add --data\.download"
        r" true to fetch MNIST there, or omit it to use the embedded MNIST$",
    ),
}


@pytest.mark.parametrize("damage,message", DATA_DIR.values(), ids=DATA_DIR.keys())
def test_a_bad_data_dir(tmp_path, monkeypatch, capsys, damage, message):
    write_fake_mnist(tmp_path / "data")
    damage(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert re.search(message, cli_error(capsys, "fit", "-c", TINY, "--data.data_dir", "data", "--data.val_size", "50"))
    assert not list(tmp_path.glob("runs/**/*.ckpt"))


SETTINGS = {
    "hidden_size_0": ("--model.hidden_size=0", "model.hidden_size must be at least 1, got 0"),
    "hidden_size_negative": ("--model.hidden_size=-3", "model.hidden_size must be at least 1, got -3"),
    "num_layers_0": ("--model.num_layers=0", "model.num_layers must be at least 1, got 0"),
    "batch_size_0": ("--data.batch_size=0", "batch sizes must be at least 1, got batch_size=0, eval_batch_size=500"),
    "lr_negative": ("--model.lr=-0.1", "model.lr must be positive, got -0.1"),
    "lr_beyond_float32": ("--model.lr=1e39", "model.lr must be at most 3.4e+38, got 1e+39"),
    "dropout_1": ("--model.dropout=1.0", "model.dropout must lie in [0, 1), got 1.0"),
    "dropout_negative": ("--model.dropout=-0.1", "model.dropout must lie in [0, 1), got -0.1"),
    "unknown_optimizer": (
        "--model.optimizer=adamx",
        "Parser key \"model.optimizer\": Expected a typing.Literal['adam', 'adamw', 'sgd', 'rmsprop']. Got value: adamx",
    ),
    "not_a_number": ("--model.lr=fast", "Parser key \"model.lr\": Expected a <class 'float'>. Got value: fast"),
}


@pytest.mark.parametrize("flag,message", SETTINGS.values(), ids=SETTINGS.keys())
def test_an_invalid_setting_is_rejected_before_training(tmp_path, monkeypatch, capsys, flag, message):
    monkeypatch.chdir(tmp_path)
    assert cli_error(capsys, "fit", "-c", TINY, flag).startswith(message)
    assert not Path("runs").exists()

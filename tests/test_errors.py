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


def out_of_type(key: str, type_name: str, value: str, restriction: str) -> str:
    """The refusal of a value outside a setting's restricted type (mnist_rnn/run/ranges.py), as options.short_error words it."""
    return f"--{key} {value} is not valid here: it takes {type_name} ({restriction})"


FLOAT32 = "v>0.0 and v<=3.4028234663852886e+38"
# Ranges are the settings' types: the parser refuses a value outside one, naming the option and the range; Trainer
# settings are checked by hand (trainer_settings.py; docs/layout.md, Hand checks kept).
SETTINGS = {
    "hidden_size_0": ("--model.hidden_size=0", out_of_type("model.hidden_size", "PositiveInt", "0", "v>0")),
    "hidden_size_negative": ("--model.hidden_size=-3", out_of_type("model.hidden_size", "PositiveInt", "-3", "v>0")),
    "num_layers_0": ("--model.num_layers=0", out_of_type("model.num_layers", "PositiveInt", "0", "v>0")),
    "batch_size_0": ("--data.batch_size=0", out_of_type("data.batch_size", "PositiveInt", "0", "v>0")),
    "lr_negative": ("--model.lr=-0.1", out_of_type("model.lr", "PositiveFloat32", "-0.1", FLOAT32)),
    "lr_beyond_float32": ("--model.lr=1e39", out_of_type("model.lr", "PositiveFloat32", "1e39", FLOAT32)),
    "dropout_1": ("--model.dropout=1.0", out_of_type("model.dropout", "DropoutRate", "1.0", "v>=0.0 and v<1.0")),
    "dropout_1.5": ("--model.dropout=1.5", out_of_type("model.dropout", "DropoutRate", "1.5", "v>=0.0 and v<1.0")),
    "dropout_negative": ("--model.dropout=-0.1", out_of_type("model.dropout", "DropoutRate", "-0.1", "v>=0.0 and v<1.0")),
    "mean_2": ("--data.mean=2", "--data.mean 2 is not valid here: it takes auto, ClosedUnitInterval (options: mnist-rnn fit --help)"),
    "max_epochs_-2": ("--trainer.max_epochs=-2", "--trainer.max_epochs must be at least 1, or -1 for no limit, got -2"),
    "unknown_optimizer": (
        "--model.optimizer=adamx",
        "--model.optimizer adamx is not valid here: it takes adam, adamw, sgd, rmsprop",
    ),
    "not_a_number": ("--model.lr=fast", "--model.lr fast is not valid here: it takes PositiveFloat32"),
}


@pytest.mark.parametrize("flag,message", SETTINGS.values(), ids=SETTINGS.keys())
def test_an_invalid_setting_is_rejected_before_training(tmp_path, monkeypatch, capsys, flag, message):
    monkeypatch.chdir(tmp_path)
    assert cli_error(capsys, "fit", "-c", TINY, flag).startswith(message)
    assert not Path("runs").exists()


def test_help_shows_each_range_by_its_type(capsys):
    from mnist_rnn.commands.cli import cli_main

    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # help wraps its lines at the terminal's width
    for option, shown in [
        ("--model.hidden_size HIDDEN_SIZE", "PositiveInt, default: 128"),
        ("--model.dropout DROPOUT", "DropoutRate, default: 0.0"),
        ("--model.lr LR", "PositiveFloat32, default: 0.003"),
        ("--model.warmup_pct WARMUP_PCT", "OpenUnitInterval, default: 0.3"),
        ("--data.batch_size BATCH_SIZE", "PositiveInt, default: 128"),
        ("--data.mean MEAN", "Union[ClosedUnitInterval, Literal['auto']], default: auto"),
        ("--data.max_shift MAX_SHIFT", "ShiftPixels, default: 1"),  # conf/default.yaml's, over the data module's 0
        ("--model.ema_decay EMA_DECAY", "Optional[OpenUnitInterval], default: 0.9995"),
        ("--threads THREADS", "Optional[PositiveInt], default: null"),
    ]:
        # the option's own entry (no other option before its type), then its type and default
        assert re.search(re.escape(option) + r" (?:(?! --).)*\(type: " + re.escape(shown) + r"\)", text), option

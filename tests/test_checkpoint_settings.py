"""A checkpoint carries what turns an input into a prediction: model settings, normalization, precision."""

import csv
import re

import pytest
import torch
from PIL import Image

from mnist_rnn.checkpoints import read_checkpoint
from tests.conftest import TINY, cli_error, run_cli, write_idx


@pytest.fixture(scope="module")
def bright(tmp_path_factory):
    """A dataset far from MNIST's statistics (bright paper, a dark line on row 2k+4 for class k), and a
    tiny model trained on it with data.mean/std auto."""
    folder = tmp_path_factory.mktemp("bright")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 400), ("t10k", 200)):
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = 215 + torch.randint(0, 40, (n, 28, 28), generator=gen)
        images[torch.arange(n), 2 * labels + 4] = 0
        write_idx(folder / f"{split}-images-idx3-ubyte", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
    for i in range(8):
        Image.fromarray(images[i].to(torch.uint8).numpy()).save(folder / f"digit{i}.png")
    cwd = tmp_path_factory.mktemp("bright_fit")
    cli, out = run_cli(
        "fit", "-c", TINY, "--data.data_dir", str(folder), "--data.val_size", "50", "--trainer.max_epochs", "15",
        "--model.lr", "0.01", cwd=cwd,
    )  # fmt: skip
    mean, std = (float(v) for v in re.search(r"normalizing with mean (\S+) and std (\S+), computed", out).groups())
    return {"data": folder, "cwd": cwd, "ckpt": cwd / cli.trainer.checkpoint_callback.best_model_path, "mean": mean, "std": std}


def test_auto_statistics_are_the_training_splits_and_travel_in_the_checkpoint(bright):
    assert bright["mean"] > 0.8  # bright paper: far from MNIST's 0.1307
    saved = read_checkpoint(bright["ckpt"])["datamodule_hyper_parameters"]
    assert (saved["mean"], saved["std"]) == (bright["mean"], bright["std"])


def test_test_with_the_checkpoint_alone_uses_its_normalization(bright, tmp_path):
    common = ["test", "--ckpt_path", str(bright["ckpt"]), "--data.data_dir", str(bright["data"]), "--data.val_size", "50"]
    alone, _ = run_cli(*common, cwd=tmp_path)
    by_hand, _ = run_cli(*common, "--data.mean", repr(bright["mean"]), "--data.std", repr(bright["std"]), cwd=tmp_path)
    assert alone.datamodule.hparams.mean == bright["mean"] and alone.datamodule.hparams.std == bright["std"]
    accuracy = alone.trainer.callback_metrics["test/acc"].item()
    assert accuracy == by_hand.trainer.callback_metrics["test/acc"].item()
    # Measured on these 200 test images: 0.87 with the dataset's own statistics, 0.04 with MNIST's.
    assert accuracy > 0.5


def test_predict_with_the_checkpoint_alone_gives_the_same_probabilities(bright, tmp_path):
    def probabilities(*extra: str) -> list[list[str]]:
        out = tmp_path / f"p{len(extra)}.csv"
        run_cli("predict", "--ckpt_path", str(bright["ckpt"]), "--data.predict_path", str(bright["data"] / "*.png"),
                "--predictions.output", str(out), *extra, cwd=tmp_path)  # fmt: skip
        return [row[1:] for row in csv.reader(out.open())]

    assert probabilities() == probabilities("--data.mean", repr(bright["mean"]), "--data.std", repr(bright["std"]))


def test_a_flag_that_contradicts_the_checkpoint_is_refused(bright, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = cli_error(capsys, "test", "--ckpt_path", str(bright["ckpt"]), "--data.data_dir", str(bright["data"]),
                        "--data.mean", "0.5")  # fmt: skip
    assert message == (
        f"checkpoint {bright['ckpt']} was trained with data.mean {bright['mean']!r} but this command sets 0.5;"
        " leave that setting out (the checkpoint's is used) or pass a checkpoint trained with it"
    )
    message = cli_error(capsys, "predict", "--ckpt_path", str(bright["ckpt"]), "--model.hidden_size", "32")
    assert message.startswith(f"checkpoint {bright['ckpt']} was trained with model.hidden_size 16 but this command sets 32;")


@pytest.mark.parametrize("trained_in", ["32-true", "bf16-mixed"])
def test_evaluation_uses_the_checkpoints_training_precision(tmp_path, trained_in):
    cli, _ = run_cli("fit", "-c", TINY, "--trainer.max_epochs", "1", "--trainer.precision", trained_in, cwd=tmp_path)
    ckpt = tmp_path / cli.trainer.checkpoint_callback.best_model_path
    assert read_checkpoint(ckpt)["precision"] == trained_in
    for subcommand in ("test", "validate"):
        evaluated, _ = run_cli(subcommand, "--ckpt_path", str(ckpt), "--trainer.limit_val_batches", "1", cwd=tmp_path)
        assert evaluated.trainer.precision == trained_in  # tiny's batch of 64 alone would pick bf16 on this CPU

"""A checkpoint carries what turns an input into a prediction: model settings, normalization, precision."""

import csv
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from mnist_rnn.run import hardware
from mnist_rnn.run.checkpoints import read_checkpoint
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


# Whether this CPU runs the LSTM in bf16-mixed: only with AVX512-BF16 or AMX (measured, docs/precision.md).
LSTM_BF16_RUNS = hardware.cpu_kernel_runs("lstm", "bf16-mixed")


@pytest.mark.parametrize("cell, trained_in", [("lstm", "32-true"), ("gru", "bf16-mixed")])
def test_evaluation_uses_the_checkpoints_training_precision(tmp_path, cell, trained_in):
    # A GRU runs in bf16-mixed on every CPU (autocast leaves its recurrence in fp32), so this runs everywhere.
    cli, _ = run_cli("fit", "-c", TINY, "--trainer.max_epochs", "1", "--trainer.precision", trained_in,
                     "--model.cell", cell, cwd=tmp_path)  # fmt: skip
    ckpt = tmp_path / cli.trainer.checkpoint_callback.best_model_path
    assert read_checkpoint(ckpt)["precision"] == trained_in
    for subcommand in ("test", "validate"):
        evaluated, out = run_cli(subcommand, "--ckpt_path", str(ckpt), "--trainer.limit_val_batches", "1", cwd=tmp_path)
        assert evaluated.trainer.precision == trained_in  # tiny's batch of 64 alone would pick bf16 on a bf16 CPU
        assert "using 32-true" not in out


def bf16_lstm_checkpoint(folder: Path) -> Path:
    """A checkpoint of an LSTM that records bf16-mixed: trained so where this CPU runs it; elsewhere a
    32-true one relabelled, which differs only in that label (bf16-mixed keeps fp32 weights)."""
    trained_in = "bf16-mixed" if LSTM_BF16_RUNS else "32-true"
    cli, _ = run_cli("fit", "-c", TINY, "--trainer.max_epochs", "1", "--trainer.precision", trained_in, cwd=folder)
    ckpt = folder / cli.trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(ckpt, weights_only=True)
    assert all(t.dtype == torch.float32 for t in checkpoint["state_dict"].values() if t.is_floating_point())
    checkpoint["precision"] = "bf16-mixed"
    torch.save(checkpoint, folder / "bf16.ckpt")
    return folder / "bf16.ckpt"


FALLBACK = re.compile(
    r"mnist-rnn: using 32-true: the checkpoint was trained in bf16-mixed, which this CPU \(.+\) cannot run for an"
    r" LSTM \(it has no AVX512-BF16 or AMX\); see docs/precision.md"
)


def evaluate_everywhere(ckpt: Path, folder: Path) -> list[tuple[str, str]]:
    """test, validate and predict of a checkpoint: (the precision each ran in, what each printed)."""
    runs = []
    for subcommand in ("test", "validate", "predict"):
        extra = ["--trainer.limit_test_batches", "1", "--trainer.limit_val_batches", "1"]
        if subcommand == "predict":
            Image.fromarray(torch.zeros(28, 28, dtype=torch.uint8).numpy()).save(folder / "blank.png")
            extra = ["--data.predict_path", str(folder / "blank.png"), "--predictions.output", str(folder / "p.csv")]
        cli, out = run_cli(subcommand, "--ckpt_path", str(ckpt), *extra, cwd=folder)
        runs.append((str(cli.trainer.precision), out))
    return runs


def test_a_bf16_checkpoint_runs_in_bf16_where_it_can_and_in_fp32_with_one_line_elsewhere(tmp_path):
    # This machine's real kernels: on a CPU with AVX512-BF16 the first branch, on one without the second.
    for precision, out in evaluate_everywhere(bf16_lstm_checkpoint(tmp_path), tmp_path):
        notes = [line for line in out.splitlines() if line.startswith("mnist-rnn: using")]
        if LSTM_BF16_RUNS:
            assert (precision, notes) == ("bf16-mixed", [])
        else:
            assert precision == "32-true" and len(notes) == 1 and FALLBACK.fullmatch(notes[0]), out


def test_without_bf16_kernels_a_bf16_checkpoint_is_evaluated_in_fp32(tmp_path, monkeypatch):
    # The other kind of CPU, simulated on any machine: the probe reports no bf16 LSTM kernel.
    ckpt = bf16_lstm_checkpoint(tmp_path)
    monkeypatch.setattr(hardware, "cpu_kernel_runs", lambda cell, precision: precision == "32-true")
    for precision, out in evaluate_everywhere(ckpt, tmp_path):
        assert precision == "32-true"
        assert len([line for line in out.splitlines() if FALLBACK.fullmatch(line)]) == 1, out


def test_an_explicit_precision_that_cannot_run_is_one_line_before_any_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hardware, "cpu_kernel_runs", lambda cell, precision: precision == "32-true")
    for precision in ("bf16-mixed", "bf16-true"):
        message = cli_error(capsys, "fit", "-c", TINY, "--trainer.precision", precision)
        assert re.fullmatch(
            rf"--trainer\.precision {precision} cannot run an LSTM on this CPU \(.+\): it has no AVX512-BF16 or AMX,"
            rf" and torch has no {precision} LSTM kernel without them; pass --trainer\.precision 32-true, or leave it"
            r" out \(null picks what this machine runs\)",
            message,
        ), message
    assert not (tmp_path / "runs").exists()


def test_an_explicit_bf16_lstm_request_runs_where_the_cpu_has_the_kernel_and_is_refused_elsewhere(tmp_path, monkeypatch, capsys):
    # The real kernels of this machine (the branches are simulated for both kinds in the tests above).
    monkeypatch.chdir(tmp_path)
    command = ["fit", "-c", TINY, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
               "--trainer.precision", "bf16-mixed"]  # fmt: skip
    if LSTM_BF16_RUNS:
        cli, _ = run_cli(*command, cwd=tmp_path)
        assert cli.trainer.precision == "bf16-mixed"
    else:
        assert cli_error(capsys, *command).startswith("--trainer.precision bf16-mixed cannot run an LSTM on this CPU")
        assert not (tmp_path / "runs").exists()

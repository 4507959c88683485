"""Every command reads its checkpoint file once and parses its command line once; what it read is what the
Trainer loads (checkpoints.SafeCheckpointIO.hand_over)."""

from __future__ import annotations

import shutil

import jsonargparse
import pytest
import torch

import mnist_rnn
from mnist_rnn.commands import bundled
from mnist_rnn.errors import CheckpointError
from mnist_rnn.run.checkpoints import SafeCheckpointIO, read_checkpoint
from tests.conftest import TINY, run_cli


@pytest.fixture
def reads(monkeypatch):
    """From here on: the calls of torch.load (each read of a checkpoint file is one), and the parses of a command line
    by the `mnist-rnn` parser."""
    counts = {"torch.load": 0, "parse_args": 0}
    load, parse_args = torch.load, jsonargparse.ArgumentParser.parse_args

    def counted_load(*args, **kwargs):
        counts["torch.load"] += 1
        return load(*args, **kwargs)

    def counted_parse_args(parser, *args, **kwargs):
        counts["parse_args"] += parser.prog == "mnist-rnn"
        return parse_args(parser, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted_load)
    monkeypatch.setattr(jsonargparse.ArgumentParser, "parse_args", counted_parse_args)
    return counts


def weights_equal(model: torch.nn.Module, checkpoint: dict, key: str = "state_dict") -> bool:
    return all(torch.equal(checkpoint[key][name], value) for name, value in model.state_dict().items())


def test_test_reads_its_checkpoint_once_and_evaluates_its_weights(tiny_run, tmp_path, reads):
    ckpt = tiny_run["run_dir"] / "checkpoints" / "last.ckpt"
    cli, _ = run_cli("test", "-c", TINY, "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert reads == {"torch.load": 1, "parse_args": 1}
    assert weights_equal(cli.model, read_checkpoint(ckpt))


def test_a_resumed_fit_reads_its_checkpoint_once_and_restores_it(tiny_run, tmp_path, reads):
    ckpt = shutil.copy(tiny_run["run_dir"] / "checkpoints" / "last.ckpt", tmp_path / "last.ckpt")
    cli, out = run_cli("fit", "-c", TINY, "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert reads == {"torch.load": 1, "parse_args": 1}
    assert "resuming in a new run folder" in out
    checkpoint = read_checkpoint(ckpt)
    # The run had ended: restored, nothing is left to train, so the weights are the checkpoint's training weights
    # (its state_dict holds their average, which a fit that trains nothing does not copy in: run/averaging.py).
    assert cli.trainer.global_step == checkpoint["global_step"] and weights_equal(cli.model, checkpoint, "current_model_state")


def test_predict_with_the_bundled_model_reads_it_once(tmp_path, reads, capsys):
    cli, _ = run_cli("predict", "--trainer.limit_predict_batches", "1", "--data.eval_batch_size", "10", "--threads", "1", cwd=tmp_path)
    assert reads == {"torch.load": 1, "parse_args": 1}
    assert "using the bundled model" in capsys.readouterr().err
    assert weights_equal(cli.model, read_checkpoint(bundled.BUNDLED_CKPT))


def test_serve_export_and_load_model_read_their_checkpoint_once(tiny_run, reads, capsys):
    ckpt = tiny_run["run_dir"] / "checkpoints" / "last.ckpt"
    for load in (lambda: bundled.command_model(None), lambda: bundled.command_model(str(ckpt)),  # serve's and export's
                 lambda: mnist_rnn.load_model(), lambda: mnist_rnn.load_model(ckpt)):  # fmt: skip
        reads["torch.load"] = 0
        load()
        assert reads["torch.load"] == 1
    assert capsys.readouterr().err.count("using the bundled model") == 1  # serve's and export's, not load_model's


def test_a_checkpoint_handed_over_is_loaded_once_then_the_file_is_read(tiny_run, reads):
    ckpt = tiny_run["run_dir"] / "checkpoints" / "last.ckpt"
    plugin, handed = SafeCheckpointIO(), {"state_dict": {}}
    plugin.hand_over(ckpt, handed)
    assert plugin.load_checkpoint(str(ckpt)) is handed and reads["torch.load"] == 0
    assert plugin.load_checkpoint(ckpt)["state_dict"] and reads["torch.load"] == 1  # the file as it is now
    plugin.hand_over(ckpt, handed)
    with pytest.raises(CheckpointError, match="does not exist"):  # another path: read, and the hand-over dropped
        plugin.load_checkpoint(ckpt.with_name("other.ckpt"))
    assert plugin.load_checkpoint(ckpt) is not handed

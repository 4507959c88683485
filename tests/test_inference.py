"""The model's per-step view, and a checkpoint loaded to answer images (shared by serve and export)."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from mnist_rnn.commands.inference import answer, load_model, step_view
from mnist_rnn.data.images import read_digit
from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.data.normalization import MNIST_MEAN, MNIST_STD, normalize
from mnist_rnn.errors import CheckpointError, PredictInputError
from mnist_rnn.model.classifier import LSTMClassifier


def write_checkpoint(path: Path, model: LSTMClassifier, **extra) -> Path:
    """A checkpoint as Lightning writes it, reduced to what loading a model reads."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), **extra}, path)
    return path


@pytest.mark.parametrize(
    "settings",
    [dict(), dict(cell="gru", num_layers=2), dict(sequence="pixels"), dict(sequence="permuted")],
    ids=["lstm-rows", "gru-2-layers", "lstm-pixels", "lstm-permuted"],
)
def test_last_step_of_the_per_step_view_is_the_forward_answer(settings):
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=16, **settings).eval()
    images = torch.randn(5, 28, 28)
    with torch.no_grad():
        steps = model.per_step_logits(images)
        logits = model(images)
    assert steps.shape == (5, 28 if model.hparams.sequence == "rows" else 784, 10)
    assert steps.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(steps[:, -1], logits)


def test_per_step_view_follows_the_rows_read_so_far():
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=16).eval()
    images = torch.randn(3, 28, 28)
    with torch.no_grad():
        steps = model.per_step_logits(images)
        # After row 10 the model has read rows 0..9 only: the same answer as for those rows alone.
        torch.testing.assert_close(steps[:, 9], model.net.head(model.net.rnn(images[:, :10])[0][:, -1]))
        changed = images.clone()
        changed[:, 10:] = 0.0
        torch.testing.assert_close(model.per_step_logits(changed)[:, :10], steps[:, :10])


def test_a_bidirectional_model_has_steps_but_no_running_answer():
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=8, bidirectional=True).eval()
    with torch.no_grad():
        assert model.per_step_logits(torch.randn(2, 28, 28)).shape == (2, 28, 10)
    view = step_view(dict(model.hparams))
    assert view.unit == "none" and view.steps == [] and "both directions" in view.note


def test_step_views():
    rows, pixels, permuted = (step_view({"sequence": s}) for s in ("rows", "pixels", "permuted"))
    assert (rows.unit, rows.steps) == ("row", list(range(1, 29)))
    assert (pixels.unit, pixels.steps) == ("row", [28 * k for k in range(1, 29)])  # the end of each row
    assert (permuted.unit, permuted.steps) == ("step", [28 * k for k in range(1, 29)])
    assert "not rows" in permuted.note


def test_a_checkpoint_loads_with_its_settings_normalization_and_training_state(tmp_path):
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=12, cell="gru", sequence="pixels")
    callbacks = {
        "ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max'}": {"monitor": "val/acc", "best_model_score": torch.tensor(0.875)},
        "ModelCheckpoint{'monitor': None}": {"monitor": None, "best_model_score": None},
    }
    path = write_checkpoint(
        tmp_path / "m.ckpt", model, epoch=3, global_step=1200, callbacks=callbacks,
        datamodule_hyper_parameters={"mean": 0.25, "std": 0.5},
    )
    loaded = load_model(path)
    assert not loaded.model.training
    assert loaded.settings["hidden_size"] == 12 and loaded.settings["cell"] == "gru"
    assert (loaded.mean, loaded.std) == (0.25, 0.5)
    assert loaded.training == {"epoch": 3, "global_step": 1200, "best": {"monitor": "val/acc", "score": 0.875}}
    assert loaded.view.steps == [28 * k for k in range(1, 29)]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], tensor)

    # Answers use the checkpoint's normalization and the model's own forward.
    digits = load_split("test")[0][:4]
    probs, per_step = answer(loaded, digits)
    with torch.no_grad():
        expected = model.eval()(normalize(digits, 0.25, 0.5)).softmax(dim=1)
    torch.testing.assert_close(probs, expected)
    assert per_step.shape == (4, 28, 10)
    torch.testing.assert_close(per_step.sum(dim=2), torch.ones(4, 28))
    torch.testing.assert_close(per_step[:, -1], probs)


def test_without_saved_normalization_mnists_is_used(tmp_path):
    loaded = load_model(write_checkpoint(tmp_path / "m.ckpt", LSTMClassifier(hidden_size=4)))
    assert (loaded.mean, loaded.std) == (MNIST_MEAN, MNIST_STD)
    assert loaded.training == {"epoch": None, "global_step": None}


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"hidden_size": 4, "kernel_size": 3}}, path)
    with pytest.raises(CheckpointError, match="kernel_size are unknown here"):
        load_model(path)
    torch.save({"state_dict": {"rnn.weight": torch.zeros(1)}, "hyper_parameters": {"hidden_size": 4}}, path)
    with pytest.raises(CheckpointError, match="made for a different model"):
        load_model(path)


def test_bytes_and_files_are_read_alike(tmp_path):
    images, _ = load_split("test")
    path = tmp_path / "digit.png"
    Image.fromarray(255 - images[3].numpy()).resize((90, 90)).save(path)
    assert torch.equal(read_digit(path.read_bytes()), read_digit(path))
    for data, reason in [(b"", "empty file"), (b"hello", "not an image"), (path.read_bytes()[:-40], "truncated")]:
        with pytest.raises(PredictInputError, match=reason):
            read_digit(data)

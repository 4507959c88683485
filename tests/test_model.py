import pytest
import torch

from mnist_rnn.errors import ConfigError
from mnist_rnn.model import LSTMClassifier


@pytest.mark.parametrize("batch", [1, 10, 128])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
def test_forward_and_backward_shapes(batch, layers, bidirectional):
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=12, num_layers=layers, bidirectional=bidirectional, dropout=0.1 * (layers > 1))
    assert model.head.in_features == 12 * (2 if bidirectional else 1)
    assert model.head.bias.shape == (10,)  # the notebook's (10, 1) bias only broadcast at batch 10
    images = torch.randn(batch, 28, 28)
    logits = model(images)
    assert logits.shape == (batch, 10)
    loss, preds, labels = model.model_step((images, torch.randint(0, 10, (batch,))))
    loss.backward()
    assert preds.shape == (batch,)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_head_reads_the_final_state_of_the_last_row():
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=8).eval()
    images = torch.randn(4, 28, 28)
    output, _ = model.rnn(images)
    assert torch.allclose(model(images), model.head(output[:, -1]), atol=1e-6)


def test_bidirectional_head_reads_backward_state_at_row_zero():
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=8, num_layers=2, bidirectional=True).eval()
    images = torch.randn(4, 28, 28)
    output, _ = model.rnn(images)
    # Forward direction: finished at the last row. Backward direction: finished at row 0.
    expected = model.head(torch.cat([output[:, -1, :8], output[:, 0, 8:]], dim=1))
    assert torch.allclose(model(images), expected, atol=1e-6)
    # output[:, -1] holds the backward direction after one row only: a different answer.
    assert not torch.allclose(model(images), model.head(output[:, -1]), atol=1e-3)


def test_forget_gate_bias_is_initialised():
    model = LSTMClassifier(hidden_size=5, num_layers=2, forget_bias=1.0)
    for layer in range(2):
        total = getattr(model.rnn, f"bias_ih_l{layer}") + getattr(model.rnn, f"bias_hh_l{layer}")
        assert torch.allclose(total[5:10], torch.ones(5))


@pytest.mark.parametrize(
    "kwargs,culprit",
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": -3}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"lr": -0.001}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"warmup_pct": 1.5}, "warmup_pct"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs, culprit):
    with pytest.raises(ConfigError, match=f"model.{culprit}"):
        LSTMClassifier(**kwargs)


def test_hyperparameters_are_saved():
    model = LSTMClassifier(hidden_size=32, lr=0.01, scheduler="cosine")
    assert model.hparams.hidden_size == 32
    assert model.hparams.lr == 0.01
    assert model.hparams.scheduler == "cosine"


def test_best_validation_accuracy_is_kept_in_the_state_dict():
    model = LSTMClassifier(hidden_size=4)
    model.val_acc_best.update(torch.tensor(0.93))
    state = model.state_dict()
    restored = LSTMClassifier(hidden_size=4)
    restored.load_state_dict(state)
    assert restored.val_acc_best.compute().item() == pytest.approx(0.93)

import inspect
import typing
from pathlib import Path

import pytest
import torch

from mnist_rnn.commands.bundled import BUNDLED_CKPT
from mnist_rnn.errors import ConfigError
from mnist_rnn.model.classifier import OPTIMIZERS, SCHEDULERS, LSTMClassifier, RecurrentClassifier
from mnist_rnn.model.network import RecurrentNet
from mnist_rnn.run.checkpoints import read_checkpoint


@pytest.mark.parametrize("batch", [1, 10, 128])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
def test_forward_and_backward_shapes(batch, layers, bidirectional):
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=12, num_layers=layers, bidirectional=bidirectional, dropout=0.1 * (layers > 1))
    assert model.net.head.in_features == 12 * (2 if bidirectional else 1)
    assert model.net.head.bias.shape == (10,)  # the notebook's (10, 1) bias only broadcast at batch 10
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
    output, _ = model.net.rnn(images)
    # The same float32 numbers, read from h_n or from the output sequence.
    assert torch.allclose(model(images), model.net.head(output[:, -1]), atol=1e-6)


def test_bidirectional_head_reads_backward_state_at_row_zero():
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=8, num_layers=2, bidirectional=True).eval()
    images = torch.randn(4, 28, 28)
    output, _ = model.net.rnn(images)
    # Forward direction: finished at the last row. Backward direction: finished at row 0.
    expected = model.net.head(torch.cat([output[:, -1, :8], output[:, 0, 8:]], dim=1))
    assert torch.allclose(model(images), expected, atol=1e-6)  # same numbers, float32 rounding only
    # output[:, -1] holds the backward direction after one row only: a different answer.
    assert not torch.allclose(model(images), model.net.head(output[:, -1]), atol=1e-3)


def test_forget_gate_bias_is_initialised():
    model = LSTMClassifier(hidden_size=5, num_layers=2, forget_bias=1.0)
    for layer in range(2):
        total = getattr(model.net.rnn, f"bias_ih_l{layer}") + getattr(model.net.rnn, f"bias_hh_l{layer}")
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
        ({"lr": float("nan")}, "lr"),
        ({"lr": 1e39}, "lr"),  # beyond float32
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"steps_per_execution": 0}, "steps_per_execution"),
        ({"optimizer": "adamx"}, "optimizer"),
        ({"cell": "rnn"}, "cell"),
        ({"sequence": "permuted", "permutation_seed": -1}, "permutation_seed"),
        # The first wrong setting is named even when a later one is of the wrong type (checked one by one).
        ({"hidden_size": 0, "lr": None}, "hidden_size"),
    ],
)
def test_invalid_hyperparameters_are_rejected(kwargs, culprit):
    with pytest.raises(ConfigError, match=f"model.{culprit}"):
        LSTMClassifier(**kwargs)


def test_a_refusal_from_python_names_the_setting_and_its_range():
    # The annotations' types (mnist_rnn/run/ranges.py), which the CLI's parser applies, refuse from Python too.
    with pytest.raises(ConfigError) as refused:
        RecurrentClassifier(hidden_size=0)
    assert str(refused.value) == "model.hidden_size must be a PositiveInt (int restricted to be >0), got 0"
    with pytest.raises(ConfigError) as refused:
        RecurrentClassifier(optimizer="adamx")
    assert str(refused.value) == "model.optimizer must be one of 'adam', 'adamw', 'sgd', 'rmsprop', got 'adamx'"


def test_the_optimizer_and_schedule_choices_are_the_ones_built():
    hints = typing.get_type_hints(RecurrentClassifier.__init__)
    assert set(typing.get_args(hints["optimizer"])) == set(OPTIMIZERS)
    assert set(typing.get_args(hints["scheduler"])) == {"none", *SCHEDULERS}


def test_a_model_loaded_from_a_cli_checkpoint_holds_plain_numbers_and_saves_a_readable_checkpoint(tmp_path):
    # A checkpoint the CLI wrote names Lightning's instantiate_module, which passes the settings through jsonargparse:
    # its restricted-type numbers must not reach hparams, or a checkpoint saved from the model holds jsonargparse's
    # classes, which the checked reader refuses as pickled code.
    import lightning as L

    assert torch.load(BUNDLED_CKPT, weights_only=True)["hyper_parameters"]["_instantiator"].endswith("instantiate_module")
    model = RecurrentClassifier.load_from_checkpoint(BUNDLED_CKPT)
    plain = (int, float, str, bool, type(None))
    assert all(type(v) in plain for v in [*model.hparams.values(), *model.hparams_initial.values()]), model.hparams
    assert type(model.net.rnn.hidden_size) is int
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "again.ckpt")
    assert read_checkpoint(tmp_path / "again.ckpt")["hyper_parameters"]["hidden_size"] == 128


def test_a_constant_lr_is_a_schedule_named_train_lr_too():
    # LearningRateMonitor names the curve after the schedule (tests/test_cli.py reads train/lr after a onecycle fit);
    # without one it would be lr-Adam, a group of its own ahead of train/ in TensorBoard.
    model = LSTMClassifier(hidden_size=8, lr=0.01, scheduler="none")
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["name"] == "train/lr" and config["lr_scheduler"]["interval"] == "step"
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    model(torch.randn(2, 28, 28)).sum().backward()
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == [0.01]  # exactly: x 1.0


def test_hyperparameters_are_saved():
    model = LSTMClassifier(hidden_size=32, lr=0.01, scheduler="cosine")
    assert model.hparams.hidden_size == 32
    assert model.hparams.lr == 0.01
    assert model.hparams.scheduler == "cosine"


def test_the_models_network_settings_are_the_networks_own():
    # Declared twice (LightningCLI and save_hyperparameters read the model's own signature, docs/layout.md):
    # the model's first nine settings must be RecurrentNet's, with the same types and defaults.
    net = dict(inspect.signature(RecurrentNet.__init__).parameters)
    model = dict(inspect.signature(RecurrentClassifier.__init__).parameters)
    names = [name for name in net if name != "self"]
    assert len(names) == 9 and list(model)[1 : len(names) + 1] == names
    assert [model[name].default for name in names] == [net[name].default for name in names]
    net_types, model_types = typing.get_type_hints(RecurrentNet.__init__), typing.get_type_hints(RecurrentClassifier.__init__)
    assert [model_types[name] for name in names] == [net_types[name] for name in names]


def test_best_validation_accuracy_is_kept_in_the_state_dict():
    model = LSTMClassifier(hidden_size=4)
    model.val_acc_best.update(torch.tensor(0.93))
    state = model.state_dict()
    restored = LSTMClassifier(hidden_size=4)
    restored.load_state_dict(state)
    assert restored.val_acc_best.compute().item() == pytest.approx(0.93)  # 0.93 as float32


@pytest.mark.parametrize("sequence,steps,features", [("rows", 28, 28), ("pixels", 784, 1), ("permuted", 784, 1)])
def test_sequence_modes_shape_the_input(sequence, steps, features):
    model = LSTMClassifier(hidden_size=8, sequence=sequence)
    images = torch.randn(3, 28, 28)
    assert model.net.to_sequence(images).shape == (3, steps, features)
    assert model.net.rnn.input_size == features
    assert model(images).shape == (3, 10)


def test_pixels_follow_reading_order():
    model = LSTMClassifier(hidden_size=8, sequence="pixels")
    images = torch.arange(2 * 784, dtype=torch.float32).reshape(2, 28, 28)
    seq = model.net.to_sequence(images)
    assert torch.equal(seq[1, :, 0], images[1].flatten())


def test_permutation_is_fixed_by_its_seed_and_survives_a_checkpoint(tmp_path):
    from mnist_rnn.model.classifier import pixel_permutation

    model = LSTMClassifier(hidden_size=8, sequence="permuted", permutation_seed=3)
    assert torch.equal(model.net.permutation, pixel_permutation(3))
    assert torch.equal(torch.sort(model.net.permutation).values, torch.arange(784))
    assert not torch.equal(pixel_permutation(3), pixel_permutation(4))
    images = torch.randn(2, 28, 28)
    assert torch.equal(model.net.to_sequence(images)[:, :, 0], images.reshape(2, 784)[:, pixel_permutation(3)])

    import lightning as L

    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path / "permuted.ckpt"
    trainer.save_checkpoint(path)
    loaded = LSTMClassifier.load_from_checkpoint(path)
    assert loaded.hparams.sequence == "permuted" and loaded.hparams.permutation_seed == 3
    assert torch.equal(loaded.net.permutation, model.net.permutation)


def test_gru_cell_and_its_bidirectional_head():
    torch.manual_seed(0)
    model = LSTMClassifier(hidden_size=6, cell="gru", bidirectional=True).eval()
    assert isinstance(model.net.rnn, torch.nn.GRU)
    images = torch.randn(4, 28, 28)
    output, _ = model.net.rnn(images)
    expected = model.net.head(torch.cat([output[:, -1, :6], output[:, 0, 6:]], dim=1))
    assert torch.allclose(model(images), expected, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_initialisations(cell):
    gates = 4 if cell == "lstm" else 3
    ortho = LSTMClassifier(hidden_size=6, cell=cell, recurrent_init="orthogonal")
    for block in ortho.net.rnn.weight_hh_l0.detach().split(6):
        assert torch.allclose(block @ block.T, torch.eye(6), atol=1e-5)  # float32 QR: errors near 1e-7
    ident = LSTMClassifier(hidden_size=6, cell=cell, recurrent_init="identity")
    assert torch.equal(ident.net.rnn.weight_hh_l0.detach(), torch.eye(6).repeat(gates, 1))
    default = LSTMClassifier(hidden_size=6, cell=cell)
    assert not torch.equal(default.net.rnn.weight_hh_l0.detach(), torch.eye(6).repeat(gates, 1))


@pytest.mark.parametrize("name", ["legacy_rows_lstm", "legacy_permuted_gru"])
def test_checkpoints_of_the_earlier_module_layout_still_load(name, tmp_path):
    """Written by mnist-rnn 0.1.0 before the network moved to network.py (weights named rnn.*, head.*)."""
    from mnist_rnn.data.mnist_files import load_split
    from mnist_rnn.data.normalization import normalize

    fixtures = Path(__file__).parent / "fixtures"
    expected = torch.load(fixtures / "legacy_logits.pt")[name]  # that code's logits for the first 16 test digits
    model = LSTMClassifier.load_from_checkpoint(fixtures / f"{name}.ckpt", map_location="cpu", weights_only=True)
    images, _ = load_split("test")
    with torch.no_grad():
        assert torch.equal(model.eval()(normalize(images[:16])), expected)


def test_the_cli_scores_a_checkpoint_of_the_earlier_module_layout(tmp_path):
    from tests.conftest import run_cli

    ckpt = Path(__file__).parent / "fixtures" / "legacy_permuted_gru.ckpt"
    # One batch of 100 digits: a 784-step GRU reads a batch of 1000 for over a minute on 2 cores.
    cli, _ = run_cli("test", "--ckpt_path", str(ckpt), "--data.eval_batch_size", "100", "--trainer.limit_test_batches", "1", cwd=tmp_path)
    assert cli.model.hparams.sequence == "permuted" and cli.model.hparams.cell == "gru"
    assert "test/acc" in cli.trainer.callback_metrics


@pytest.mark.parametrize(
    "precision,clip,kind",
    [
        ("bf16-mixed", 1.0, "fused"),  # the default recipe where the CPU has bf16: clipped here, the step stays fused
        ("32-true", 1.0, "fused"),
        ("16-mixed", 1.0, "foreach"),  # a gradient scaler must unscale before clipping: Lightning refuses fused then
        ("16-mixed", None, "fused"),
    ],
)
def test_clipped_gradients_keep_the_fused_optimizer_unless_a_scaler_needs_unscaling(precision, clip, kind):
    import lightning as L
    from lightning.pytorch.plugins import MixedPrecision

    torch.manual_seed(0)
    model = RecurrentClassifier(hidden_size=8, scheduler="none")
    # Lightning turns 16-mixed into bf16-mixed on a CPU: the plugin with its gradient scaler, as a GPU would have it.
    scaled = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    chosen = {"plugins": [scaled]} if precision == "16-mixed" else {"precision": precision}
    trainer = L.Trainer(accelerator="cpu", gradient_clip_val=clip, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **chosen)
    model.trainer = trainer
    trainer.strategy.connect(model)
    optimizer = model.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused" if kind == "fused" else "foreach"] is True
    assert not optimizer.defaults["foreach" if kind == "fused" else "fused"]
    if clip and kind == "fused":
        for p in model.parameters():
            p.grad = torch.full_like(p, 10.0)
        model.configure_gradient_clipping(optimizer, clip, "norm")
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
        assert norm == pytest.approx(1.0, rel=1e-5)  # float32 rounding of the clip factor
        model.configure_gradient_clipping(optimizer, 0.5, "value")
        assert all(p.grad.abs().max() <= 0.5 for p in model.parameters())

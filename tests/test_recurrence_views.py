"""RecurrenceViews: the four views of the recurrence exist after real fits and mean what they say."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_rnn.model.network import RecurrentNet
from mnist_rnn.views.pictures import FONT_SIZE, SHOWN_WIDTH
from mnist_rnn.views.unroll import gradient_by_step, unroll
from tests.conftest import TINY, run_cli

IMAGE_TAGS = ("views/accuracy_by_steps_read", "views/gradient_by_step", "views/gates")
TEXT_TAGS = ("views/accuracy_by_steps_read/text_summary", "views/gradient_by_step/text_summary")
SHORT = ("--trainer.max_epochs", "1", "--threads", "1")


def events(run_dir: Path) -> EventAccumulator:
    return EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0, "scalars": 0}).Reload()


def texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]


def table(text: str) -> dict[int, list[float]]:
    """The rows `| k | value | ...` of a view's markdown table, by k."""
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", text, flags=re.M)
    return {int(k): [float(v) for v in values.split(" | ")] for k, values in rows}


def projector(run_dir: Path) -> dict[str, Path]:
    [folder] = run_dir.glob("*/views%2fhidden_state")
    return {name: folder / name for name in ("tensors.tsv", "metadata.tsv", "sprite.png")}


def fit(tmp_path: Path, *args: str):
    cli, _ = run_cli("fit", *args, "--trainer.logger.init_args.name", "views", cwd=tmp_path)
    return cli, tmp_path / "runs" / "views" / "version_0"


def assert_views_logged(run_dir: Path, steps: int, digits: int) -> EventAccumulator:
    acc = events(run_dir)
    for tag in IMAGE_TAGS:
        assert tag in acc.Tags()["images"], f"{tag} missing from {acc.Tags()['images']}"
    for tag in TEXT_TAGS:
        assert tag in acc.Tags()["tensors"], f"{tag} missing from {acc.Tags()['tensors']}"
    assert_pictures(acc)
    assert (run_dir / "projector_config.pbtxt").is_file()
    assert "views/hidden_state" in (run_dir / "projector_config.pbtxt").read_text()
    # At k = T the network has read everything: the same answers as val/acc, at the same step.
    val_acc = {e.step: e.value for e in acc.Scalars("val/acc")}
    for step, text in texts(acc, "views/accuracy_by_steps_read/text_summary"):
        by_k = table(text)
        assert max(by_k) == steps and 1 in by_k
        # To one image of those validated (the table prints six decimals, finer than 1/digits).
        assert by_k[steps][0] == pytest.approx(val_acc[step], abs=1 / digits)
    for _, text in texts(acc, "views/gradient_by_step/text_summary"):
        norms = [v for values in table(text).values() for v in values]
        assert norms and all(math.isfinite(v) and v > 0 for v in norms), norms
    return acc


def assert_pictures(acc: EventAccumulator) -> None:
    """Each view's picture is a real drawing of a readable size, and the validation ones sit at val/acc's steps."""
    val_steps = [e.step for e in acc.Scalars("val/acc")]
    for tag in IMAGE_TAGS:
        pictures = acc.Images(tag)
        if tag != "views/gradient_by_step":  # logged during training; the others at each validation
            assert [p.step for p in pictures] == val_steps, tag  # one per validation epoch, next to its scalars
        with Image.open(io.BytesIO(pictures[-1].encoded_image_string)) as picture:
            assert picture.size == (pictures[-1].width, pictures[-1].height)
            # Drawn sizes (views/pictures.py): the curves 700x350; the gates 512 (GRU) or 716 (LSTM) wide, 76 px
            # plus 158 (hidden 16) or 170 (hidden 128) per digit and direction high: 708 to 1,436 for 4 digits
            # (gates_image measured for LSTM and GRU, hidden 16 and 128, one and two directions, 2026-12-07).
            # TensorBoard shows each SHOWN_WIDTH wide: its text at 11 px or more there, never blown up.
            assert SHOWN_WIDTH <= picture.width and FONT_SIZE * SHOWN_WIDTH / picture.width >= 11, (tag, picture.size)
            assert 300 <= picture.height <= 1500, (tag, picture.size)
            colours = picture.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 3, tag  # lines, text and shades drawn, not a blank canvas


def assert_embedding(run_dir: Path, points: int) -> None:
    files = projector(run_dir)
    assert len(files["tensors.tsv"].read_text().splitlines()) == points
    labels = files["metadata.tsv"].read_text().split()
    assert len(labels) == points and set(labels) <= {str(k) for k in range(10)}
    side = math.ceil(points**0.5) * 28  # a square of 28x28 sprites
    assert Image.open(files["sprite.png"]).size == (side, side)


def test_default_config_logs_every_view(tmp_path):
    # The default config (LSTM 128 over rows), a few batches; one validation batch of 1,000 digits.
    cli, run_dir = fit(tmp_path, *SHORT, "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "1")
    assert_views_logged(run_dir, steps=28, digits=1000)
    assert_embedding(run_dir, points=1000)


def test_pixels_log_every_view(tmp_path):
    # Sequential MNIST (784 steps), tiny: 2 batches, 100 validation digits, 64 on the gradient.
    cli, run_dir = fit(
        tmp_path, "-c", TINY, *SHORT, "--model.sequence", "pixels", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--data.eval_batch_size", "100",
    )  # fmt: skip
    acc = events(run_dir)
    assert "views/accuracy_by_steps_read" in acc.Tags()["images"]
    # The table lists about 28 of the 784 ks, the last among them.
    assert_views_logged(run_dir, steps=784, digits=100)
    assert_embedding(run_dir, points=1000)


def views_config(tmp_path: Path, **init_args) -> str:
    """A config whose only callback is RecurrenceViews with these settings."""
    args = "".join(f"        {k}: {str(v).lower()}\n" for k, v in init_args.items())
    path = tmp_path / "views.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n    - class_path: mnist_rnn.views.recurrence.RecurrenceViews\n"
        + ("      init_args:\n" + args if args else "")
    )
    return str(path)


def test_bidirectional_gru_logs_every_view_on_one_fixed_batch(tmp_path):
    config = views_config(tmp_path, gradient_every_n_steps=2)
    cli, run_dir = fit(
        tmp_path, "-c", TINY, "-c", config, *SHORT, "--model.cell", "gru", "--model.bidirectional", "true",
        "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "2",
    )  # fmt: skip
    acc = assert_views_logged(run_dir, steps=28, digits=1000)
    assert_embedding(run_dir, points=1000)
    gradients = texts(acc, "views/gradient_by_step/text_summary")
    # Every 2 steps and at the first: steps 1, 2 and 4 of 5.
    assert [step for step, _ in gradients] == [1, 2, 4]
    # Both directions' columns, on the same fixed batch each time: the first 64 validation digits.
    assert all(len(values) == 2 for _, text in gradients for values in table(text).values())
    images = torch.cat([images for images, _ in cli.datamodule.val_dataloader()])[:64]
    expected = f"the first 64 validation digits (pixel sum {float(images.double().sum()):.6f})"
    assert all(expected in text for _, text in gradients)
    # The weights changed between logs, so did the gradients: they are recomputed, not cached.
    assert len({text for _, text in gradients}) == len(gradients)


def test_views_switched_off_log_nothing(tmp_path):
    config = views_config(tmp_path, accuracy_by_steps=False, gradient_every_n_steps=0, gate_digits=0, embedding_digits=0)
    cli, run_dir = fit(tmp_path, "-c", TINY, "-c", config, *SHORT, "--trainer.limit_train_batches", "3")
    acc = events(run_dir)
    assert not set(IMAGE_TAGS) & set(acc.Tags()["images"])
    assert not set(TEXT_TAGS) & set(acc.Tags()["tensors"])
    assert not (run_dir / "projector_config.pbtxt").exists()
    assert not list(run_dir.glob("*/views%2fhidden_state"))


@pytest.mark.parametrize(
    "settings",
    [{}, {"cell": "gru"}, {"bidirectional": True, "num_layers": 2}, {"sequence": "permuted", "hidden_size": 8},
     {"sequence": "pixels", "cell": "gru", "bidirectional": True, "hidden_size": 8}],
)  # fmt: skip
def test_hand_unrolled_network_is_the_network(settings):
    torch.manual_seed(0)
    net = RecurrentNet(**settings).eval()
    images = torch.randn(4, 28, 28)
    with torch.no_grad():
        unrolled = unroll(net, images, keep_gates=True)
        # float32 sums in another order: measured differences up to 6e-8 on logits of order 0.1.
        torch.testing.assert_close(unrolled.logits, net(images), atol=1e-5, rtol=1e-5)
        steps = net.to_sequence(images).shape[1]
        for direction_gates in unrolled.gates:
            for gate in direction_gates.values():
                assert gate.shape == (4, steps, net.hidden_size) and 0 <= gate.min() and gate.max() <= 1
        assert len(unrolled.gates) == (2 if net.bidirectional else 1)
        # features(steps=T) is features(): the cut sequence is the whole one.
        torch.testing.assert_close(net.features(images, steps=steps), net.features(images))


def test_gradient_by_step_leaves_the_network_gradients_alone():
    torch.manual_seed(0)
    net = RecurrentNet(hidden_size=16)
    norms = gradient_by_step(net, torch.randn(8, 28, 28), torch.randint(0, 10, (8,)))
    assert norms.shape == (1, 28) and torch.isfinite(norms).all() and (norms > 0).all()
    assert all(p.grad is None for p in net.parameters())

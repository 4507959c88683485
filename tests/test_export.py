"""`mnist-rnn export`: ONNX (and torch.export) files that answer as PyTorch does, never over the user's files."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime
import pytest
import torch

from mnist_rnn.commands.inference import answer, load_model
from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.model.classifier import LSTMClassifier
from tests.conftest import cli_error, run_main
from tests.test_inference import write_checkpoint

# What the export prints after checking the exported file against PyTorch.
CHECKED = re.compile(
    r"(?P<what>ONNX Runtime|torch\.export) \(\S+\) vs PyTorch on (?P<n>[\d,]+) official test images:"
    r" same class for (?P<same>[\d,]+)/(?P=n), largest probability difference (?P<gap>\S+)"
)


def checks(stdout: str) -> dict[str, tuple[int, int, float]]:
    found = {m["what"]: (int(m["n"].replace(",", "")), int(m["same"].replace(",", "")), float(m["gap"])) for m in CHECKED.finditer(stdout)}
    assert found, stdout
    return found


def test_export_writes_onnx_and_pt2_that_answer_as_pytorch(trained_ckpt, tmp_path):
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    output.write_bytes(b"an older export")  # replaced: --overwrite is given
    status, stdout, err = run_main(
        "export", "--ckpt_path", str(trained_ckpt), "--output", str(output), "--pt2", str(tmp_path / "model.pt2"),
        "--overwrite", "--check_images", "500", cwd=tmp_path,
    )
    assert status == 0, err
    found = checks(stdout)
    # Measured on this checkpoint: 8e-7 for ONNX Runtime, 0 for torch.export; 1e-4 is the export's own bound.
    assert found["ONNX Runtime"][:2] == (500, 500) and found["ONNX Runtime"][2] < 1e-4
    assert found["torch.export"][:2] == (500, 500) and found["torch.export"][2] < 1e-4
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["model.onnx", "model.pt2"]  # no staging files left

    # Run the file as a user would: uint8 pixels in, probabilities out, any batch size.
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (pixels,) = session.get_inputs()
    assert pixels.name == "pixels" and pixels.type == "tensor(uint8)" and pixels.shape[1:] == [28, 28]
    assert isinstance(pixels.shape[0], str)  # a named, dynamic batch axis
    images, _ = load_split("test")
    expected = answer(load_model(trained_ckpt), images[500:537])[0].numpy()
    for batch in (images[500:501], images[500:537]):
        (probabilities,) = session.run(None, {"pixels": batch.numpy()})
        assert probabilities.shape == (len(batch), 10) and probabilities.dtype == np.float32
        np.testing.assert_allclose(probabilities, expected[: len(batch)], atol=1e-5)  # measured gap: 8e-7
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    np.testing.assert_allclose(program(images[500:537]).detach().numpy(), expected, atol=1e-5)


def test_existing_files_are_never_replaced_without_overwrite(trained_ckpt, tmp_path, capsys):
    mine = tmp_path / "model.onnx"
    mine.write_bytes(b"the user's own file")
    message = cli_error(capsys, "export", "--ckpt_path", str(trained_ckpt), "--output", str(mine))
    assert message == f"{mine} exists; pass --overwrite to replace it, or choose another file name"
    pt2 = tmp_path / "model.pt2"
    pt2.write_bytes(b"another of the user's files")
    message = cli_error(capsys, "export", "--ckpt_path", str(trained_ckpt), "--output", str(tmp_path / "new.onnx"), "--pt2", str(pt2))
    assert message.startswith(f"{pt2} exists")
    assert mine.read_bytes() == b"the user's own file" and pt2.read_bytes() == b"another of the user's files"
    assert not (tmp_path / "new.onnx").exists()  # refused before anything was written


def test_bad_export_settings_are_one_line_errors(trained_ckpt, tmp_path, capsys):
    assert "checkpoint nope.ckpt does not exist" in cli_error(capsys, "export", "--ckpt_path", "nope.ckpt", "--output", "m.onnx")
    assert "--check_images 0 is not valid here: it takes an integer in 1..10000" in cli_error(
        capsys, "export", "--ckpt_path", str(trained_ckpt), "--output", "m.onnx", "--check_images", "0"
    )
    assert "is a folder" in cli_error(capsys, "export", "--ckpt_path", str(trained_ckpt), "--output", str(tmp_path))
    assert "--output is required" in cli_error(capsys, "export", "--ckpt_path", str(trained_ckpt))


@pytest.mark.parametrize("sequence", ["rows", "pixels", "permuted"])
def test_reading_an_image_as_a_sequence_keeps_the_batch_axis_dynamic(sequence):
    """What made exported pixel models accept only the example's batch size (a reshape by len(images))."""
    model = LSTMClassifier(hidden_size=4, sequence=sequence).eval()

    class ToSequence(torch.nn.Module):
        def forward(self, images):
            return model.net.to_sequence(images)

    program = torch.export.export(ToSequence(), (torch.zeros(2, 28, 28),), dynamic_shapes={"images": {0: torch.export.Dim("batch")}})
    images = torch.randn(5, 28, 28)
    torch.testing.assert_close(program.module()(images), model.net.to_sequence(images))


@pytest.mark.slow  # about a minute: torch.export traces the 784 steps of a pixel model one by one
def test_a_permuted_pixel_model_exports_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    ckpt = write_checkpoint(tmp_path / "m.ckpt", LSTMClassifier(hidden_size=8, sequence="permuted"))
    status, stdout, err = run_main(
        "export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "p.onnx"), "--check_images", "50", cwd=tmp_path
    )
    assert status == 0, err
    n, same, gap = checks(stdout)["ONNX Runtime"]
    assert (n, same) == (50, 50) and gap < 1e-4  # measured: 1.5e-8 (float32 rounding)


@pytest.mark.slow
def test_onnx_matches_pytorch_on_all_10000_test_images(trained_ckpt, tmp_path):
    status, stdout, err = run_main("export", "--ckpt_path", str(trained_ckpt), "--output", str(tmp_path / "m.onnx"), cwd=tmp_path)
    assert status == 0, err
    n, same, gap = checks(stdout)["ONNX Runtime"]
    assert (n, same) == (10_000, 10_000) and gap < 1e-4  # measured: 8.3e-7 (float32 rounding)

"""`mnist-rnn export`: a checkpoint's model as an ONNX file (and a torch.export program), checked against PyTorch.

The ONNX file is written by torch.onnx.export's default exporter since torch 2.9, the torch.export-based
one ("dynamo", which needs onnxscript, installed with mnist-rnn); the TorchScript one is deprecated.
Only a file that ONNX Runtime runs on the official test images with PyTorch's class for every one, and
probabilities within MAX_PROBABILITY_GAP, is moved into place; nothing is overwritten without --overwrite.
The graph's input and output: PixelsToProbabilities, and docs/export.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from mnist_rnn.commands import bundled
from mnist_rnn.commands.inference import LoadedModel, PixelsToLogits, answer
from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.errors import ExportError
from mnist_rnn.model.network import IMAGE_SIDE
from mnist_rnn.run.folders import staged

# The largest difference in any probability allowed between ONNX Runtime and PyTorch. Measured:
# 2e-8 to 3e-7 for LSTM, GRU, bidirectional and permuted models (float32 rounding, 2026-11-30).
MAX_PROBABILITY_GAP = 1e-4
CHECK_BATCH = 1000


class PixelsToProbabilities(PixelsToLogits):
    """The exported graph: uint8 pixels (batch, 28, 28) -> probabilities (batch, 10), normalization inside."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return super().forward(pixels).softmax(dim=1)


def run(ckpt_path: Optional[str], output: str, pt2: Optional[str], overwrite: bool, check_images: int) -> None:
    """`mnist-rnn export`, its options checked by their types (own_commands.export)."""
    onnx_file = Path(output).expanduser()
    pt2_file = Path(pt2).expanduser() if pt2 else None
    for target in filter(None, [onnx_file, pt2_file]):
        check_target(target, overwrite)
    loaded = bundled.command_model(ckpt_path)
    images, labels = load_split("test")
    images, labels = images[:check_images], labels[:check_images]
    # The checkpoint's answers as `mnist-rnn predict` computes them (data.normalize, predict_step).
    reference = torch.cat([answer(loaded, chunk)[0] for chunk in images.split(CHECK_BATCH)])
    accuracy = float((reference.argmax(dim=1) == labels).float().mean())
    write_checked(onnx_file, export_onnx, onnx_runner, "ONNX Runtime", loaded, images, reference, overwrite)
    print(
        f"exported {loaded.path} to {onnx_file}\n"
        "  input  pixels: uint8 (batch, 28, 28), 0..255, white ink on black as in MNIST; normalization is inside\n"
        "  output probabilities: float32 (batch, 10)",
        flush=True,
    )
    if pt2_file:
        write_checked(pt2_file, export_pt2, pt2_runner, "torch.export", loaded, images, reference, overwrite)
        print(f"exported {loaded.path} to {pt2_file} (torch.export program, same input and output)", flush=True)
    print(f"PyTorch's accuracy on these {len(labels):,} images: {accuracy:.4f}", flush=True)


def write_checked(target: Path, export, runner, what: str, loaded: LoadedModel, images, reference, overwrite: bool) -> None:
    """Export under a hidden name, check the file against PyTorch, and only then give it its name."""
    try:
        with staged(target, suffix=target.suffix, overwrite=overwrite) as staging:
            export(loaded, staging)
            check(f"{what} ({target.name})", runner(staging), images, reference)
    except FileExistsError:
        raise ExportError(f"{target} appeared while exporting; pass --overwrite to replace it, or choose another file name") from None
    except OSError as err:  # named as the file asked for, not its hidden stand-in
        raise ExportError(f"cannot write {target} ({err.strerror or err}); choose another place") from None


def check_target(target: Path, overwrite: bool) -> None:
    if target.is_dir():
        raise ExportError(f"{target} is a folder; pass a file name, e.g. {target / 'model.onnx'}")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists; pass --overwrite to replace it, or choose another file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"cannot create the folder of {target} ({err.strerror or err}); choose another place") from None
    if not os.access(target.parent, os.W_OK):
        raise ExportError(f"cannot write into {target.parent} (permission denied); choose another place")


def _traced(loaded: LoadedModel) -> tuple[nn.Module, tuple[torch.Tensor], dict]:
    """What both exporters trace: the module, an example input, and its dynamic batch axis."""
    module = PixelsToProbabilities(loaded.model, loaded.mean, loaded.std).eval()
    example = torch.zeros(2, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8)  # 2: torch.export specializes a size of 1
    return module, (example,), {"pixels": {0: torch.export.Dim("batch", min=1)}}


@contextlib.contextmanager
def _quiet():
    """The exporters' deprecation notices and progress lines concern torch's internals, not the user's model."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_onnx(loaded: LoadedModel, path: Path) -> None:
    module, example, dynamic = _traced(loaded)
    with _quiet():
        program = torch.onnx.export(
            module, example, input_names=["pixels"], output_names=["probabilities"],
            dynamic_shapes=dynamic, dynamo=True, verbose=False, report=False,
        )
        program.save(str(path))


def export_pt2(loaded: LoadedModel, path: Path) -> None:
    module, example, dynamic = _traced(loaded)
    with _quiet():
        program = torch.export.export(module, example, dynamic_shapes=dynamic)
        archive = io.BytesIO()  # in memory first: torch's archive writer aborts the process on a full disk (torch 2.14)
        torch.export.save(program, archive)
    path.write_bytes(archive.getbuffer())


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(["probabilities"], {"pixels": pixels})[0]


def pt2_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with _quiet():
        module = torch.export.load(str(path)).module()

    def run_pt2(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(pixels)).numpy()

    return run_pt2


def check(what: str, runner: Callable[[np.ndarray], np.ndarray], images: torch.Tensor, reference: torch.Tensor) -> None:
    """An ExportError unless the runner gives reference's class for every image, probabilities within MAX_PROBABILITY_GAP."""
    answers = np.concatenate([runner(chunk.numpy()) for chunk in images.split(CHECK_BATCH)])
    expected = reference.numpy()
    differing = int((answers.argmax(axis=1) != expected.argmax(axis=1)).sum())
    gap = float(np.abs(answers - expected).max())
    n = len(images)
    print(
        f"{what} vs PyTorch on {n:,} official test images: same class for {n - differing:,}/{n:,},"
        f" largest probability difference {gap:.2e}",
        flush=True,
    )
    if differing or not gap <= MAX_PROBABILITY_GAP:
        raise ExportError(
            f"the exported model disagrees with PyTorch ({differing} classes differ, probabilities by up to {gap:.2e},"
            f" allowed {MAX_PROBABILITY_GAP:g}); nothing was written. Report this with the checkpoint and torch's version"
        )

"""A checkpoint loaded once as a model ready to answer, and images as its answers: what `serve` and `export` share.

An image reaches the model as in `mnist-rnn predict`: `images.read_digit`, `data.normalize` with
the training data's mean and std, then the model's own `predict_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from mnist_rnn.data.normalization import NO_LABEL, normalize, saved_normalization
from mnist_rnn.model.classifier import RecurrentClassifier
from mnist_rnn.model.network import IMAGE_SIDE
from mnist_rnn.run import checkpoints


@dataclass
class StepView:
    """Which of the model's time steps make a running answer worth showing, and how to call them."""

    unit: str  # "row": the answer after row k; "step": after k pixels of a permuted order; "none"
    steps: list[int]  # the 1-based time steps shown (after which many steps of the sequence)
    note: str  # one sentence for the page: what the strip shows, or why there is none


@dataclass
class LoadedModel:
    """A checkpoint's model in eval mode, with what it needs to answer and what is known about it."""

    model: RecurrentClassifier
    path: Path
    settings: dict[str, Any]  # the model's constructor arguments, as saved in the checkpoint
    mean: float
    std: float
    training: dict[str, Any]  # epoch, global_step and best monitored score, where the checkpoint holds them
    view: StepView


class PixelsToLogits(nn.Module):
    """Pixels in, logits out, normalization inside: the model as the ONNX file holds it (docs/export.md).

    Pixels (batch, 28, 28), uint8 or float, 0..255, white ink on black as in MNIST's files; logits (batch, 10), float32.
    """

    def __init__(self, model: RecurrentClassifier, mean: float, std: float) -> None:
        super().__init__()
        self.model = model
        self.mean = mean
        self.std = std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dim() != 3 or tuple(pixels.shape[1:]) != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(
                f"pixels must be (batch, {IMAGE_SIDE}, {IMAGE_SIDE}), got {tuple(pixels.shape)};"
                " add the batch axis with pixels[None] for one image"
            )
        return self.model(normalize(pixels, self.mean, self.std)).float()


def _number(value: Any) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        return float(value) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) else None


def training_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Where training was when the checkpoint was written, and the best score its ModelCheckpoint saw."""
    state: dict[str, Any] = {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
    for name, callback in (checkpoint.get("callbacks") or {}).items():
        if str(name).startswith("ModelCheckpoint") and isinstance(callback, dict):
            score = _number(callback.get("best_model_score"))
            if callback.get("monitor") and score is not None:
                state["best"] = {"monitor": callback["monitor"], "score": score}
                break
    return state


def step_view(settings: dict[str, Any]) -> StepView:
    """What the per-step strip can show for a model with these settings."""
    sequence = settings.get("sequence", "rows")
    if settings.get("bidirectional", False):
        return StepView(
            "none", [],
            "This model reads the image in both directions, so it has no answer before it has read all of it:"
            " only its final answer is shown.",
        )
    if sequence == "rows":
        return StepView("row", list(range(1, IMAGE_SIDE + 1)), "Its answer after each row it has read, top to bottom.")
    every_row = list(range(IMAGE_SIDE, IMAGE_SIDE * IMAGE_SIDE + 1, IMAGE_SIDE))
    if sequence == "pixels":
        return StepView(
            "row", every_row,
            "This model reads one pixel at a time (784 steps): shown is its answer after every 28th pixel,"
            " which is the end of each row.",
        )
    return StepView(
        "step", every_row,
        "This model reads the 784 pixels in a fixed random order: shown is its answer after every 28th pixel"
        " of that order, which are not rows.",
    )


def load_model(path: Union[str, Path]) -> LoadedModel:
    """The checkpoint's model, in eval mode, or a CheckpointError that says what is wrong with the file."""
    return model_of(checkpoints.read_checkpoint(path), Path(path))


def model_of(checkpoint: dict[str, Any], path: Path) -> LoadedModel:
    """The model of a checkpoint read from path already (`checkpoints.read_checkpoint`), in eval mode."""
    saved = checkpoints.saved_settings(checkpoint, path, RecurrentClassifier, checkpoints.PREPROCESSING)
    settings = saved["model"]
    model = RecurrentClassifier(**settings)
    checkpoints.check_fits(model, checkpoint, path)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    mean, std = saved_normalization(saved["data"])
    loaded = LoadedModel(model, path, settings, mean, std, training_state(checkpoint), step_view(settings))
    # The first forward after loading weights rebuilds nn.LSTM's cached list of flat weights; done
    # here, once, so that every later forward only reads the model (see serve.py on concurrency).
    answer(loaded, torch.zeros(1, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8))
    return loaded


def answer(loaded: LoadedModel, digits: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Probabilities (N, 10) of uint8 digits (N, 28, 28) by predict_step, as in `mnist-rnn predict`.

    Also the running answer (N, steps, 10) at the steps of `loaded.view`, None when it has none to show.
    """
    images = normalize(digits, loaded.mean, loaded.std)
    labels = torch.full((len(digits),), NO_LABEL, dtype=torch.int64)
    with torch.inference_mode():
        probs = loaded.model.predict_step((images, labels), 0)["probs"]
        per_step = None
        if loaded.view.steps:
            index = torch.tensor(loaded.view.steps) - 1
            per_step = loaded.model.per_step_logits(images)[:, index].float().softmax(dim=-1)
    return probs, per_step


"""The normalization, in one place: the data module, `predict`, `serve` and the ONNX graph call `normalize`."""

from __future__ import annotations

from typing import Any

import torch

# The mean and standard deviation of MNIST's training pixels (scaled to [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

# The label of an image that has none (the user's own digits): predict writes no label column then.
NO_LABEL = -1


def normalize(images: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """Pixels in [0, 255] (uint8 or float) -> float32, standardized as during training.

    The only code doing this arithmetic: the data module, `predict`, `serve` and the ONNX graph call it.
    One copy, then in place: the input is left as it was, and all of MNIST needs one float copy only.
    """
    return images.to(torch.float32, copy=True).div_(255.0).sub_(mean).div_(std)


def saved_normalization(saved_data: dict[str, Any]) -> tuple[float, float]:
    """The mean and standard deviation a checkpoint's model was trained with (its data settings), else MNIST's."""
    return float(saved_data.get("mean", MNIST_MEAN)), float(saved_data.get("std", MNIST_STD))


"""Callbacks that let a run be resumed exactly where it was interrupted."""

from __future__ import annotations

import random
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class RandomState(Callback):
    """Saves the random generators in every checkpoint and restores them on resume.

    Lightning restores weights, optimizer, schedule and loop progress but not the generators, so
    a resumed run would draw other dropout masks than the uninterrupted one. NumPy's generator is
    left out: nothing in training draws from it. (The order of the training images does not come
    from these generators either: see `mnist_rnn.data.EpochShuffle`.)
    """

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

"""Batches of an in-memory dataset: each batch one index operation, a new order per epoch, and a training
loader that, resumed mid-epoch, skips what the interrupted epoch had served."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from mnist_rnn.run.steps_per_execution import group, lightning_steps


class InMemoryDataset(TensorDataset):
    """Images and labels as tensors, each batch one index operation; `names`: each image's source, for the CSV.

    DataLoader calls `__getitems__` with the batch's indices (torch>=2.0), so the standard samplers
    (shuffling, DistributedSampler under DDP) work unchanged.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: Optional[list[str]] = None) -> None:
        super().__init__(images, labels)
        self.images, self.labels, self.names = images, labels, names

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, device=self.images.device)
        return self.images[index], self.labels[index]


def shift_images(images: torch.Tensor, max_shift: int, background: float) -> torch.Tensor:
    """Move each (28, 28) image by its own random offset in [-max_shift, max_shift] on both axes,
    filling what comes in from the border with the background value. One gather for the batch."""
    n, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, value=background)
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, n, 1), device=images.device)
    rows = torch.arange(height, device=images.device) + max_shift - dy  # (n, height)
    cols = torch.arange(width, device=images.device) + max_shift - dx  # (n, width)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def batch_as_is(batch):
    """The collate function for InMemoryDataset: its batches come out already stacked."""
    return batch


class EpochShuffle(Sampler[int]):
    """A new order of the training images every epoch, drawn from (seed, epoch) alone.

    So a resumed run sees exactly the batches the uninterrupted run would have seen. Lightning calls
    `set_epoch` at every epoch start (through its DistributedSampler wrapper too, under DDP).
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        # A generator: the order is drawn at the first index, after Lightning has set the epoch.
        # hash() of a tuple of ints is the same in every process (only str and bytes hashes are salted).
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)))
        yield from torch.randperm(self.size, generator=generator).tolist()


@dataclass(eq=False)
class ResumePoint:
    """How far the training loader got in its epoch; the datamodule saves it in every checkpoint."""

    epoch: Optional[int] = None
    served: int = 0  # batches handed out so far in this epoch
    pending: Optional[dict[str, Any]] = None  # a checkpoint's position, not yet applied


class ResumableLoader(DataLoader):
    """A DataLoader that, resumed mid-epoch, skips what the interrupted epoch had served, and that can
    serve several batches per Lightning step.

    Not Lightning's own mechanism (a stateful loader such as torchdata's StatefulDataLoader): in
    lightning 2.6.6 a schedule that asks `trainer.estimated_stepping_batches` (onecycle, cosine) has
    the loader set up before the loop state is restored, so the saved position is never applied.
    The datamodule's state, restored first, has no such problem. Counted in batches of this process's
    sampler: under DDP, where Lightning rebuilds the loader with the same `resume`, each rank skips its share.

    With steps_per_execution K > 1 each item is a list of K batches (the epoch's last may hold fewer),
    one optimizer step each: K = 1's batches in K times fewer Lightning steps; `len()` counts the lists.
    """

    def __init__(self, *args: Any, resume: Optional[ResumePoint] = None, steps_per_execution: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume = resume if resume is not None else ResumePoint()
        self.steps_per_execution = steps_per_execution

    @property
    def batches_per_epoch(self) -> int:
        """Training batches (optimizer steps) in one epoch of this process."""
        return super().__len__()

    def __len__(self) -> int:
        return lightning_steps(self.batches_per_epoch, self.steps_per_execution)

    def __iter__(self):
        return group(self._batches(), self.steps_per_execution)

    def _batches(self):
        # Everything happens at the first batch, after Lightning has set the sampler's epoch.
        resume = self.resume
        epoch = getattr(self.sampler, "epoch", None)
        pending, resume.pending = resume.pending, None
        skip = pending["served"] if pending is not None and pending.get("epoch") == epoch else 0
        resume.epoch, resume.served = epoch, 0
        for served, batch in enumerate(super().__iter__(), start=1):
            resume.served = served  # read only between yields: then it counts what was handed out
            if served > skip:
                yield batch

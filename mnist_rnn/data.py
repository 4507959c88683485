"""MNIST's images normalized, split and served in batches (the files are `mnist_files`' job).

The dataset lives in memory as one normalized float32 tensor (about 190 MB): a batch is one index
into it, with no per-sample Python, PIL or collate work, so training runs about twice as fast as
with torchvision's per-sample pipeline.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from mnist_rnn.errors import ConfigError, DatasetError
from mnist_rnn.images import read_digits
from mnist_rnn.mnist_files import find_idx_files, load_split, read_idx
from mnist_rnn.steps_per_execution import check_settings, group, lightning_steps

# The dataset is in memory: worker processes would only copy it, so Lightning's advice to add some does not apply.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
# Lightning's warning that a mid-epoch resume starts its epoch over: here the datamodule saves the position (ResumableLoader).
warnings.filterwarnings("ignore", message=r".*ended before the epoch ended and your dataloader is not resumable.*")

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


def check_source(data_dir: Optional[str], download: bool, val_size: int, splits: bool) -> None:
    """setup's own refusals that need no image read, made before the trainer makes a run folder (the CLI calls it): a
    folder without the IDX files, a split (fit, validate) that its training images (or the embedded 60,000) cannot hold."""
    if download:
        return
    files = None if data_dir is None else find_idx_files(Path(data_dir))
    if files is None or splits:  # test and predict split a data folder only for `auto` statistics, refused in setup then
        check_val_size(60_000 if files is None else len(read_idx(files[("train", "labels")], "labels")), val_size)


def check_val_size(n: int, val_size: int) -> None:
    if not 0 < val_size < n:
        raise ConfigError(f"data.val_size must lie in 1..{n - 1}, got {val_size}")


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, validation) indices covering range(n), drawn reproducibly from seed."""
    check_val_size(n, val_size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


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


class MNISTDataModule(L.LightningDataModule):
    """MNIST (or any MNIST-format dataset), served as (batch, 28, 28) float32 rows-as-time-steps."""

    def __init__(
        self,
        data_dir: Optional[str] = None,
        download: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        mean: Union[float, Literal["auto"]] = "auto",
        std: Union[float, Literal["auto"]] = "auto",
        predict_path: Optional[str] = None,
        max_shift: int = 0,
        steps_per_execution: int = 1,
    ) -> None:
        """
        Args:
            data_dir: Folder of MNIST-format IDX files (raw or .gz; flat, in raw/, or torchvision's MNIST/raw layout), e.g. Fashion-MNIST or
                KMNIST. Default: the MNIST embedded in the package, which needs no network.
            download: Fetch MNIST with torchvision into data_dir (default ./data) when it is not there yet. Needs network.
            batch_size: Training batch size.
            eval_batch_size: Batch size for validation, test and predict; no sample is ever dropped.
            val_size: How many images of the official training set are held out for validation.
            split_seed: Seed of the train/validation draw, kept apart from the training seed so that every run validates on the same images.
            mean: Mean of the training pixels in [0, 1], subtracted from every image. auto: MNIST's (0.1307) for the embedded
                MNIST, else computed from the training split of data_dir (and printed). Saved in every checkpoint, which test,
                validate and predict then use.
            std: Standard deviation of the training pixels in [0, 1], each image is divided by it. auto: as for mean (MNIST's is 0.3081).
            predict_path: What `predict` reads: an image file, a folder of images or a glob pattern (quoted), in any format Pillow reads,
                any size, colour or grey, dark ink on light paper or the reverse. Default: the official test set.
            max_shift: Augment training batches by moving each digit up to this many pixels horizontally and vertically (a fresh random
                shift per image and step). 0: off. Validation, test and predict always see the images as they are.
            steps_per_execution: Training batches served per Lightning step, as a list; set by the CLI from model.steps_per_execution (see
                RecurrentClassifier), which must match.
        """
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(f"batch sizes must be at least 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}")
        if mean != "auto" and not 0 <= mean <= 1:
            raise ConfigError(f"data.mean must lie in [0, 1] (the pixels are scaled to [0, 1]) or be auto, got {mean}")
        if std != "auto" and not std > 0:
            raise ConfigError(f"data.std must be positive or auto, got {std}")
        check_settings(steps_per_execution)
        if not 0 <= max_shift <= 8:
            raise ConfigError(f"data.max_shift must lie in 0..8 pixels, got {max_shift}")
        self.save_hyperparameters()
        if data_dir is None and download:
            data_dir = "data"
        self.data_dir = Path(data_dir) if data_dir is not None else None  # None: the embedded MNIST
        self.datasets: dict[str, InMemoryDataset] = {}
        # (path, reason) of each predict_path file that could not be read, for the CLI to report.
        self.skipped: list[tuple[str, str]] = []
        self.resume = ResumePoint()

    def prepare_data(self) -> None:
        if not self.hparams.download:
            return
        from torchvision.datasets import MNIST

        try:
            MNIST(root=str(self.data_dir), train=True, download=True)
            MNIST(root=str(self.data_dir), train=False, download=True)
        except Exception as err:  # URLError, HTTPError, checksum mismatch, ...
            raise DatasetError(
                f"downloading MNIST into {self.data_dir} failed ({err}); without network, omit --data.download"
                " and --data.data_dir to use the embedded MNIST"
            ) from None

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, names: Optional[list[str]] = None) -> InMemoryDataset:
        # On the CUDA device when training there (about 220 MB for all of MNIST): no batch is copied from the host.
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        device = self.trainer.strategy.root_device if on_cuda else torch.device("cpu")
        # Normalized after selecting a split, so only one float copy of the pixels ever exists.
        images = normalize(images.to(device), self.hparams.mean, self.hparams.std)
        return InMemoryDataset(images, labels.to(device), names)

    def _training_split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The official training set and the seeded (train, validation) indices into it."""
        images, labels = load_split("train", self.data_dir)
        train_idx, val_idx = split_indices(len(labels), self.hparams.val_size, self.hparams.split_seed)
        return images, labels, train_idx, val_idx

    def _resolve_normalization(self, split=None) -> None:
        """Replace `auto` by numbers, kept in hparams so that checkpoints carry them."""
        if self.hparams.mean != "auto" and self.hparams.std != "auto":
            return
        if self.data_dir is None or self.hparams.download:  # the embedded or a downloaded MNIST
            mean, std = MNIST_MEAN, MNIST_STD
        else:
            images, _, train_idx, _ = split if split is not None else self._training_split()
            pixels = images[train_idx].double().div_(255.0)
            mean, std = float(pixels.mean()), float(pixels.std())
            if std <= 0:
                raise DatasetError(f"the training images of {self.data_dir} are all one shade; nothing to learn from")
            if self.trainer is None or self.trainer.is_global_zero:
                source = f"computed from the training split of {self.data_dir}"
                print(f"data: normalizing with mean {mean!r} and std {std!r}, {source}", flush=True)
        if self.hparams.mean == "auto":
            self.hparams.mean = mean
        if self.hparams.std == "auto":
            self.hparams.std = std

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.datasets:
            split = self._training_split()
            self._resolve_normalization(split)
            images, labels, train_idx, val_idx = split
            self.datasets["train"] = self._dataset(images[train_idx], labels[train_idx])
            self.datasets["val"] = self._dataset(images[val_idx], labels[val_idx])
        user_images = self.hparams.predict_path is not None
        if (stage == "test" or (stage == "predict" and not user_images)) and "test" not in self.datasets:
            images, labels = load_split("test", self.data_dir)
            self._resolve_normalization()  # after the test files, so that their problems are named first
            # The CSV's path column for the official test set: the image's index in it.
            self.datasets["test"] = self._dataset(images, labels, [f"test#{i}" for i in range(len(labels))])
        if stage == "predict" and not user_images:
            self.datasets["predict"] = self.datasets["test"]
        elif stage == "predict" and "predict" not in self.datasets:
            # The user's own images, read once into memory like MNIST itself.
            digits = read_digits(self.hparams.predict_path)
            self._resolve_normalization()
            self.skipped = digits.skipped
            labels = torch.full((len(digits.paths),), NO_LABEL, dtype=torch.int64)
            self.datasets["predict"] = self._dataset(digits.images, labels, digits.paths)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not (self.hparams.max_shift and self.trainer is not None and self.trainer.training):
            return batch
        background = -self.hparams.mean / self.hparams.std  # a zero pixel, normalized
        batches = batch if isinstance(batch, list) else [batch]  # a list: several batches for one Lightning step
        shifted = [(shift_images(images, self.hparams.max_shift, background), labels) for images, labels in batches]
        return shifted if isinstance(batch, list) else shifted[0]

    def _loader(self, split: str, batch_size: int, loader_class: type = DataLoader, **kwargs: Any) -> DataLoader:
        return loader_class(
            self.datasets[split],
            batch_size=batch_size,
            collate_fn=batch_as_is,
            # Batches are one tensor index away: worker processes would only add copies.
            num_workers=0,
            # Each new iterator draws a seed for its workers; from its own generator, not the global
            # one, so that a resumed run, which starts its iterator at another moment than the
            # uninterrupted run did, still draws the same dropout masks.
            generator=torch.Generator(),
            **kwargs,
        )

    def train_dataloader(self) -> ResumableLoader:
        # The training order follows the run's seed (set by Lightning's seed_everything), else a fresh one.
        run_seed = os.environ.get("PL_GLOBAL_SEED")
        seed = int(run_seed) if run_seed is not None else int(torch.randint(2**62, ()).item())
        order = EpochShuffle(len(self.datasets["train"]), seed=seed)
        return self._loader(
            "train", self.hparams.batch_size, loader_class=ResumableLoader, sampler=order, resume=self.resume,
            steps_per_execution=self.hparams.steps_per_execution,
        )  # fmt: skip

    # Lightning saves this in every checkpoint and hands it back on resume, before the training loader
    # is iterated: a mid-epoch resume carries on with the batches that were left, not the epoch over.
    def state_dict(self) -> dict[str, Any]:
        # A position loaded but not applied yet (a checkpoint written before the loader served a batch, such as
        # after a validation owed at an epoch's end: resume.OwedValidation) is still where the epoch stands.
        pending = self.resume.pending
        return {"train_position": dict(pending) if pending else {"epoch": self.resume.epoch, "served": self.resume.served}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_position" in state_dict:
            self.resume.pending = dict(state_dict["train_position"])

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.hparams.eval_batch_size)

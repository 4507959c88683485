"""`MNISTDataModule`: MNIST's images read, normalized, split and served in batches (the files are `mnist_files`'
job, the batches `batches`', the arithmetic `normalization`'s).

The dataset lives in memory as one normalized float32 tensor (about 190 MB): a batch is one index
into it, with no per-sample Python, PIL or collate work, so training runs about twice as fast as
with torchvision's per-sample pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, PositiveFloat, PositiveInt
from torch.utils.data import DataLoader

from mnist_rnn.data.batches import EpochShuffle, InMemoryDataset, ResumableLoader, ResumePoint, batch_as_is, shift_images
from mnist_rnn.data.images import read_digits
from mnist_rnn.data.mnist_files import find_idx_files, load_split, read_idx
from mnist_rnn.data.normalization import MNIST_MEAN, MNIST_STD, NO_LABEL, normalize
from mnist_rnn.errors import ConfigError, DatasetError
from mnist_rnn.run import ranges
from mnist_rnn.run.ranges import ShiftPixels


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




class MNISTDataModule(L.LightningDataModule):
    """MNIST (or any MNIST-format dataset), served as (batch, 28, 28) float32 rows-as-time-steps."""

    def __init__(
        self,
        data_dir: Optional[str] = None,
        download: bool = False,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        mean: Union[ClosedUnitInterval, Literal["auto"]] = "auto",
        std: Union[PositiveFloat, Literal["auto"]] = "auto",
        predict_path: Optional[str] = None,
        max_shift: ShiftPixels = 0,
        steps_per_execution: PositiveInt = 1,
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
            max_shift: Augment training batches by moving each digit up to this many pixels (0..8) horizontally and vertically (a fresh
                random shift per image and step). 0: off. Validation, test and predict always see the images as they are.
            steps_per_execution: Training batches served per Lightning step, as a list; set by the CLI from model.steps_per_execution (see
                RecurrentClassifier), which must match.
        """
        super().__init__()
        # The ranges are the annotations' (run/ranges.py), which LightningCLI's parser checks; from Python, this does.
        ranges.check(MNISTDataModule.__init__, locals(), "data")
        # Plain numbers before save_hyperparameters reads them (load_from_checkpoint passes jsonargparse's).
        batch_size, eval_batch_size, mean, std, max_shift, steps_per_execution = ranges.plain(
            batch_size, eval_batch_size, mean, std, max_shift, steps_per_execution
        )
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

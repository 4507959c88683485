"""Where MNIST comes from, and how its batches reach the model.

The whole dataset lives in memory as one normalized float32 tensor (60,000 x 28 x 28 is about
190 MB): a batch is a single index into it, with no per-sample Python, PIL or collate work.
That is what lets training run about twice as fast as torchvision's per-sample pipeline.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_rnn.errors import ConfigError, DatasetError
from mnist_rnn.images import read_digits

# The mean and standard deviation of MNIST's training pixels (scaled to [0, 1]).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# The label of an image that has none (the user's own digits): predict writes no label column then.
NO_LABEL = -1

# The four IDX files of an MNIST-format dataset (Fashion-MNIST and KMNIST use the same names).
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

EMBEDDED_DIR = Path(__file__).parent / "assets" / "mnist"


def embedded_checksums() -> dict[str, str]:
    """MD5 of the uncompressed content of each embedded file, from the vendored MD5SUMS."""
    sums = {}
    for line in (EMBEDDED_DIR / "MD5SUMS").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            sums[name] = digest
    return sums


def _read_idx(path: Path, kind: str, expected_md5: Optional[str] = None) -> torch.Tensor:
    """Read one IDX file, raw or gzip-compressed, with torchvision's reader.

    Every failure becomes a DatasetError that names the file: a wrong dataset must never be
    used silently.
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(
            f"{path}: cannot be decompressed ({err}); the file is truncated or corrupted, replace it"
        ) from None
    if expected_md5 is not None:
        actual = hashlib.md5(raw).hexdigest()
        if actual != expected_md5:
            raise DatasetError(
                f"{path}: content MD5 is {actual}, expected {expected_md5}; the file is altered or"
                " truncated, reinstall mnist-rnn to restore it"
            )
    reader = read_image_file if kind == "images" else read_label_file
    # torchvision's reader takes a path to an uncompressed file.
    with tempfile.TemporaryDirectory(prefix="mnist-rnn-") as tmp:
        plain = Path(tmp) / path.name.removesuffix(".gz")
        plain.write_bytes(raw)
        try:
            tensor = reader(str(plain))
        except Exception as err:  # torchvision signals bad files with asserts and assorted errors
            raise DatasetError(
                f"{path}: not a valid MNIST-format IDX {kind} file ({type(err).__name__}: {err})"
            ) from None
    if kind == "images" and tuple(tensor.shape[1:]) != (28, 28):
        raise DatasetError(f"{path}: images are {tuple(tensor.shape[1:])}, expected 28x28")
    if kind == "labels" and tensor.numel() and not 0 <= int(tensor.min()) <= int(tensor.max()) <= 9:
        raise DatasetError(f"{path}: labels must lie in 0..9, found {int(tensor.min())}..{int(tensor.max())}")
    return tensor


def find_idx_files(data_dir: Path) -> dict[tuple[str, str], Path]:
    """Locate the four IDX files in data_dir: flat, in raw/, or in torchvision's <NAME>/raw/ layout."""
    if not data_dir.is_dir():
        raise DatasetError(
            f"--data.data_dir {data_dir} does not exist; point it at a folder of MNIST-format IDX files,"
            " add --data.download true to fetch MNIST there, or omit it to use the embedded MNIST"
        )
    folders = [data_dir, data_dir / "raw", *sorted(data_dir.glob("*/raw"))]
    found, missing = {}, []
    for key, name in IDX_FILES.items():
        hit = next(
            (folder / f for folder in folders for f in (name, name + ".gz") if (folder / f).is_file()),
            None,
        )
        if hit is None:
            missing.append(name)
        else:
            found[key] = hit
    if missing:
        what = "holds no MNIST-format IDX files" if not found else "lacks " + ", ".join(missing)
        raise DatasetError(
            f"--data.data_dir {data_dir} {what}; expected {', '.join(IDX_FILES.values())}"
            " (each raw or .gz) in it, in raw/ or in <NAME>/raw/; add --data.download true to fetch MNIST"
        )
    return found


def load_split(split: str, data_dir: Optional[Path] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' or 'test' split."""
    if data_dir is None:
        sums = embedded_checksums()
        paths = {k: EMBEDDED_DIR / (name + ".gz") for k, name in IDX_FILES.items()}
    else:
        sums = {}
        paths = find_idx_files(data_dir)
    images_path, labels_path = paths[(split, "images")], paths[(split, "labels")]
    images = _read_idx(images_path, "images", sums.get(IDX_FILES[(split, "images")]))
    labels = _read_idx(labels_path, "labels", sums.get(IDX_FILES[(split, "labels")]))
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return images, labels


def normalize(images: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32, standardized as during training."""
    return images.float().div_(255.0).sub_(mean).div_(std)


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, validation) indices covering range(n), drawn reproducibly from seed."""
    if not 0 < val_size < n:
        raise ConfigError(f"data.val_size must lie in 1..{n - 1}, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


class InMemoryDataset(Dataset):
    """Images and labels held as tensors; a whole batch is fetched with one index operation.

    DataLoader calls `__getitems__` with the batch's indices when a dataset has it (torch>=2.0),
    so the standard samplers (shuffling, DistributedSampler under DDP) work unchanged.
    `names` says where each image came from, for the predictions CSV.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: Optional[list[str]] = None) -> None:
        self.images = images
        self.labels = labels
        self.names = names

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

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
    """A new order of the training images every epoch, drawn from (seed, epoch) alone, that can resume mid-epoch.

    The order of epoch e does not depend on what this process did before, so a run resumed from a
    checkpoint sees exactly the batches the uninterrupted run would have seen: Lightning calls
    `set_epoch` at every epoch start, and the position within the epoch travels in the checkpoint
    with the datamodule's state.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.served = 0  # indices handed out so far in this epoch
        self._resume_at = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._resume_at = 0  # a saved position belongs to the epoch it was saved in
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        # hash() of a tuple of ints is the same in every process (only str and bytes hashes are salted).
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch)))
        order = torch.randperm(self.size, generator=generator)
        start, self._resume_at = self._resume_at, 0
        self.served = start
        for index in order[start:].tolist():
            self.served += 1
            yield index

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self._resume_at = state["seed"], state["epoch"], state["served"]


def shuffle_seed() -> int:
    """The run's seed (seed_everything), else a fresh one: the training order follows the run's seed."""
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by Lightning's seed_everything
    return int(seed) if seed is not None else int(torch.randint(2**62, ()).item())


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
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
        predict_path: Optional[str] = None,
        max_shift: int = 0,
    ) -> None:
        """
        Args:
            data_dir: Folder of MNIST-format IDX files (raw or .gz; flat, in raw/, or torchvision's
                MNIST/raw layout), e.g. Fashion-MNIST or KMNIST. Default: the MNIST embedded in the
                package, which needs no network.
            download: Fetch MNIST with torchvision into data_dir (default ./data) when it is not
                there yet. Needs network.
            batch_size: Training batch size.
            eval_batch_size: Batch size for validation, test and predict; no sample is ever dropped.
            val_size: How many images of the official training set are held out for validation.
            split_seed: Seed of the train/validation draw, kept apart from the training seed so that
                every run validates on the same images.
            mean: Mean of the training pixels in [0, 1], subtracted before training.
            std: Standard deviation of the training pixels in [0, 1], divided by before training.
            predict_path: What `predict` reads: an image file, a folder of images or a glob pattern
                (quoted), in any format Pillow reads, any size, colour or grey, dark ink on light paper
                or the reverse. Default: the official test set.
            max_shift: Augment training batches by moving each digit up to this many pixels
                horizontally and vertically (a fresh random shift per image and step). 0: off.
                Validation, test and predict always see the images as they are.
        """
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError(
                f"batch sizes must be at least 1, got batch_size={batch_size}, eval_batch_size={eval_batch_size}"
            )
        if std <= 0:
            raise ConfigError(f"data.std must be positive, got {std}")
        if not 0 <= max_shift <= 8:
            raise ConfigError(f"data.max_shift must lie in 0..8 pixels, got {max_shift}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.datasets: dict[str, InMemoryDataset] = {}
        # (path, reason) of each predict_path file that could not be read, for the CLI to report.
        self.skipped: list[tuple[str, str]] = []
        self.train_order: Optional[EpochShuffle] = None
        self._resume_order: Optional[dict[str, int]] = None

    def prepare_data(self) -> None:
        if not self.hparams.download:
            return
        from torchvision.datasets import MNIST

        root = self.data_dir or Path("data")
        try:
            MNIST(root=str(root), train=True, download=True)
            MNIST(root=str(root), train=False, download=True)
        except Exception as err:  # URLError, HTTPError, checksum mismatch, ...
            raise DatasetError(
                f"downloading MNIST into {root} failed ({err}); without network, omit --data.download"
                " and --data.data_dir to use the embedded MNIST"
            ) from None

    def _data_dir(self) -> Optional[Path]:
        if self.data_dir is None and self.hparams.download:
            return Path("data")
        return self.data_dir

    def _device(self) -> torch.device:
        """Where the tensors live: on a CUDA device when training there (about 220 MB for all
        of MNIST), so that no batch is copied from the host; in host memory otherwise."""
        if self.trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, names: Optional[list[str]] = None) -> InMemoryDataset:
        device = self._device()
        # Normalized after selecting a split, so only one float copy of the pixels ever exists.
        images = normalize(images.to(device), self.hparams.mean, self.hparams.std)
        return InMemoryDataset(images, labels.to(device), names)

    def setup(self, stage: str) -> None:
        if stage in ("fit", "validate") and "train" not in self.datasets:
            images, labels = load_split("train", self._data_dir())
            train_idx, val_idx = split_indices(len(labels), self.hparams.val_size, self.hparams.split_seed)
            self.datasets["train"] = self._dataset(images[train_idx], labels[train_idx])
            self.datasets["val"] = self._dataset(images[val_idx], labels[val_idx])
        user_images = self.hparams.predict_path is not None
        if (stage == "test" or (stage == "predict" and not user_images)) and "test" not in self.datasets:
            images, labels = load_split("test", self._data_dir())
            # The CSV's path column for the official test set: the image's index in it.
            self.datasets["test"] = self._dataset(images, labels, [f"test#{i}" for i in range(len(labels))])
        if stage == "predict" and not user_images:
            self.datasets["predict"] = self.datasets["test"]
        elif stage == "predict" and "predict" not in self.datasets:
            # The user's own images, read once into memory like MNIST itself.
            digits = read_digits(self.hparams.predict_path)
            self.skipped = digits.skipped
            labels = torch.full((len(digits.paths),), NO_LABEL, dtype=torch.int64)
            self.datasets["predict"] = self._dataset(digits.images, labels, digits.paths)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.hparams.max_shift and self.trainer is not None and self.trainer.training:
            images, labels = batch
            background = -self.hparams.mean / self.hparams.std  # a zero pixel, normalized
            return shift_images(images, self.hparams.max_shift, background), labels
        return batch

    def _loader(self, split: str, batch_size: int, sampler: Optional[Sampler] = None) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=batch_as_is,
            # Batches are one tensor index away: worker processes would only add copies.
            num_workers=0,
            # Each new iterator draws a seed for its workers; from its own generator, not the global
            # one, so that a resumed run, which starts its iterator at another moment than the
            # uninterrupted run did, still draws the same dropout masks.
            generator=torch.Generator(),
        )

    def train_dataloader(self) -> DataLoader:
        self.train_order = EpochShuffle(len(self.datasets["train"]), seed=shuffle_seed())
        if self._resume_order is not None:
            self.train_order.load_state_dict(self._resume_order)
        return self._loader("train", self.hparams.batch_size, sampler=self.train_order)

    # Lightning saves this in every checkpoint and hands it back on resume, before it asks for the
    # training loader: the position in the epoch's order, so a mid-epoch resume carries on with
    # the batches that were left instead of starting the epoch's iteration over.
    def state_dict(self) -> dict[str, Any]:
        if self.train_order is None or (self.trainer is not None and self.trainer.world_size > 1):
            return {}  # under DDP Lightning wraps the sampler in one that draws the whole order at once
        return {"train_order": self.train_order.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_order = state_dict.get("train_order")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.hparams.eval_batch_size)

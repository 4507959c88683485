"""The data: MNIST's IDX files and the user's images, read, normalized and served in batches.

The names of the module `mnist_rnn.data` of 0.2 and older are handed on (a saved config's
`class_path: mnist_rnn.data.…`), imported on first use."""

from mnist_rnn.old_paths import handed_on

_OLD_NAMES = {
    "check_source": "mnist_rnn.data.datamodule",
    "check_val_size": "mnist_rnn.data.datamodule",
    "split_indices": "mnist_rnn.data.datamodule",
    "MNISTDataModule": "mnist_rnn.data.datamodule",
    "MNIST_MEAN": "mnist_rnn.data.normalization",
    "MNIST_STD": "mnist_rnn.data.normalization",
    "NO_LABEL": "mnist_rnn.data.normalization",
    "normalize": "mnist_rnn.data.normalization",
    "saved_normalization": "mnist_rnn.data.normalization",
    "InMemoryDataset": "mnist_rnn.data.batches",
    "shift_images": "mnist_rnn.data.batches",
    "batch_as_is": "mnist_rnn.data.batches",
    "EpochShuffle": "mnist_rnn.data.batches",
    "ResumePoint": "mnist_rnn.data.batches",
    "ResumableLoader": "mnist_rnn.data.batches",
}
__getattr__ = handed_on(__name__, _OLD_NAMES)

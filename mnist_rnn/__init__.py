"""mnist-rnn: MNIST digits read row by row by an LSTM, trained with PyTorch Lightning.

The sub-packages are the layers, each importing only those listed before it: `run` (run folders,
checkpoints, resume, stopping, hardware), `data` (files to batches), `model` (the network and the
LightningModule), `views` (the dashboards), `commands` (the `mnist-rnn` command). docs/layout.md.
"""

from mnist_rnn import old_paths
from mnist_rnn.old_paths import handed_on

old_paths.install()

# Where each public name lives. They are imported on first use (PEP 562), so that the `mnist-rnn`
# command's own help and the commands that need no training start without torch and Lightning.
_LAZY = {"MNISTDataModule": "mnist_rnn.data.datamodule", "LSTMClassifier": "mnist_rnn.model.classifier",
         "RecurrentClassifier": "mnist_rnn.model.classifier", "RecurrentNet": "mnist_rnn.model.network",
         "load_model": "mnist_rnn.commands.bundled"}  # fmt: skip

__all__ = ["LSTMClassifier", "MNISTDataModule", "RecurrentClassifier", "RecurrentNet", "load_model"]
__version__ = "0.2.0"
__getattr__ = handed_on(__name__, _LAZY)

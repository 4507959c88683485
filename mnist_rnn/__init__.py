"""mnist-rnn: MNIST digits read row by row by an LSTM, trained with PyTorch Lightning."""

import importlib

# Where each public name lives. They are imported on first use (PEP 562), so that the `mnist-rnn`
# command's own help and the commands that need no training start without torch and Lightning.
_LAZY = {"MNISTDataModule": "mnist_rnn.data", "LSTMClassifier": "mnist_rnn.model", "RecurrentClassifier": "mnist_rnn.model",
         "RecurrentNet": "mnist_rnn.network", "load_model": "mnist_rnn.bundled"}  # fmt: skip

__all__ = ["LSTMClassifier", "MNISTDataModule", "RecurrentClassifier", "RecurrentNet", "load_model"]
__version__ = "0.2.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mnist_rnn' has no attribute {name!r}")

"""mnist-rnn: MNIST digits read row by row by an LSTM, trained with PyTorch Lightning."""

import importlib

# Where each public name lives. They are imported on first use (PEP 562), so that the `mnist-rnn`
# command's own help and the commands that need no training start without torch and Lightning.
_LAZY = {"MNISTDataModule": "mnist_rnn.data", "LSTMClassifier": "mnist_rnn.model",
         "RecurrentClassifier": "mnist_rnn.model", "RecurrentNet": "mnist_rnn.network"}  # fmt: skip

__all__ = ["LSTMClassifier", "MNISTDataModule", "RecurrentClassifier", "RecurrentNet", "load_model"]
__version__ = "0.2.0"


def load_model(ckpt_path=None):
    """The bundled trained model (or a checkpoint's, with ckpt_path) as a torch.nn.Module in eval mode.

    It takes pixels (batch, 28, 28), uint8 or float in 0..255, white ink on black as in MNIST, and
    returns logits (batch, 10); see docs/model-card.md.
    """
    from mnist_rnn.bundled import load_model as load  # imported when called: the package's import stays light

    return load(ckpt_path)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mnist_rnn' has no attribute {name!r}")

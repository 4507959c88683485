"""mnist-rnn: MNIST digits read row by row by an LSTM, trained with PyTorch Lightning."""

from mnist_rnn.data import MNISTDataModule
from mnist_rnn.model import LSTMClassifier, RecurrentClassifier
from mnist_rnn.network import RecurrentNet

__all__ = ["LSTMClassifier", "MNISTDataModule", "RecurrentClassifier", "RecurrentNet", "load_model"]
__version__ = "0.2.0"


def load_model(ckpt_path=None):
    """The bundled trained model (or a checkpoint's, with ckpt_path) as a torch.nn.Module in eval mode.

    It takes pixels (batch, 28, 28), uint8 or float in 0..255, white ink on black as in MNIST, and
    returns logits (batch, 10); see docs/model-card.md.
    """
    from mnist_rnn.bundled import load_model as load  # imported when called: the package's import stays light

    return load(ckpt_path)

"""mnist-rnn: MNIST digits read row by row by an LSTM, trained with PyTorch Lightning."""

from mnist_rnn.data import MNISTDataModule
from mnist_rnn.model import LSTMClassifier, RecurrentClassifier
from mnist_rnn.network import RecurrentNet

__all__ = ["LSTMClassifier", "MNISTDataModule", "RecurrentClassifier", "RecurrentNet"]
__version__ = "0.1.0"

"""The model: the recurrent network (`network`) and the LightningModule that trains it (`classifier`).

The names of the module `mnist_rnn.model` of 0.2 and older are handed on (a saved config's
`class_path: mnist_rnn.model.…`), imported on first use."""

from mnist_rnn.old_paths import handed_on

_OLD_NAMES = {
    "FLOAT32_MAX": "mnist_rnn.model.classifier",
    "RecurrentClassifier": "mnist_rnn.model.classifier",
    "OPTIMIZERS": "mnist_rnn.model.optimization",
    "SCHEDULERS": "mnist_rnn.model.optimization",
    "LSTMClassifier": "mnist_rnn.model.classifier",
}
__getattr__ = handed_on(__name__, _OLD_NAMES)

"""The `mnist-rnn` command: fit, validate, test and predict (LightningCLI), serve, export, sweep, the bundled model.

`main` is the command itself (`dispatch.main`); it imports neither torch nor Lightning.
"""

from mnist_rnn.commands.dispatch import main

__all__ = ["main"]

"""The trained model that ships inside the package: where it is, what it is, and loading it.

`assets/bundled.ckpt`, made by `python -m mnist_rnn.commands.make_bundled` (docs/model-card.md), is a checkpoint
of the default config without the optimizer, scheduler and callback states (it is for use, not
resuming), so it loads like any checkpoint `fit` writes. Its `bundled` entry records the config, seed
and test accuracy `mnist-rnn test` measured on it, which the commands that use it print in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from torch import nn

if TYPE_CHECKING:
    from mnist_rnn.commands.inference import LoadedModel

BUNDLED_CKPT = Path(__file__).parents[1] / "assets" / "bundled.ckpt"
MAX_BYTES = 1_000_000  # the bound on what the wheel carries for the model
# What the bundled checkpoint keeps of a training checkpoint: enough to rebuild the model, turn an
# image into its input, and evaluate it in the precision it was trained in.
KEEP = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "precision", "epoch", "global_step",
        "pytorch-lightning_version")  # fmt: skip
INFO = "bundled"


def describe(checkpoint: dict[str, Any]) -> str:
    """What the bundled model is: config, seed and measured test accuracy."""
    info = checkpoint.get(INFO) or {}
    return (
        f"using the bundled model: {info.get('config', '?')} config, seed {info.get('seed', '?')},"
        f" test accuracy {100 * float(info.get('test_acc', float('nan'))):.2f}%"
    )


def announcement(checkpoint: dict[str, Any]) -> str:
    return f"{describe(checkpoint)} (pass --ckpt_path for your own)"


def command_model(ckpt_path: Optional[Union[str, Path]]) -> LoadedModel:
    """The model serve and export use: the user's checkpoint when given, else the bundled one, announced on
    stderr (stdout stays the command's results). Its file is read once."""
    from mnist_rnn.commands.inference import model_of
    from mnist_rnn.run.checkpoints import read_checkpoint

    path = Path(ckpt_path or BUNDLED_CKPT)
    checkpoint = read_checkpoint(path)
    if not ckpt_path:
        print(announcement(checkpoint), file=sys.stderr, flush=True)
    return model_of(checkpoint, path)


def load_model(ckpt_path: Optional[Union[str, Path]] = None) -> nn.Module:
    """`mnist_rnn.load_model`, documented there: the model of ckpt_path (else the bundled one), pixels in, logits out."""
    from mnist_rnn.commands.inference import PixelsToLogits
    from mnist_rnn.commands.inference import load_model as load_checkpoint_model

    loaded = load_checkpoint_model(ckpt_path or BUNDLED_CKPT)
    return PixelsToLogits(loaded.model, loaded.mean, loaded.std).eval()

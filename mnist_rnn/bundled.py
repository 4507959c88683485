"""The trained model that ships inside the package: where it is, what it is, and loading it.

`mnist_rnn/assets/bundled.ckpt` is one checkpoint of the default config (conf/default.yaml), kept
to its weights: the optimizer, scheduler and callback states are dropped (it is meant to be
used, not resumed), while the model settings, the normalization and the training precision stay,
so it loads through `checkpoints.read_checkpoint` like any checkpoint `mnist-rnn fit` writes. Its
`bundled` entry records the config, the seed and the test accuracy `mnist-rnn test` measured on
it, which the commands that use it print in one line.

Made, or remade, by `python -m mnist_rnn.make_bundled` (mnist_rnn/make_bundled.py, docs/model-card.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

BUNDLED_CKPT = Path(__file__).parent / "assets" / "bundled.ckpt"
MAX_BYTES = 1_000_000  # the bound on what the wheel carries for the model
# What the bundled checkpoint keeps of a training checkpoint: enough to rebuild the model, turn an
# image into its input, and evaluate it in the precision it was trained in.
KEEP = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "precision", "epoch", "global_step",
        "pytorch-lightning_version")  # fmt: skip
INFO = "bundled"


def describe(checkpoint: dict[str, Any]) -> str:
    """What the bundled model is, in words: config, seed and measured test accuracy."""
    info = checkpoint.get(INFO) or {}
    return (
        f"using the bundled model: {info.get('config', '?')} config, seed {info.get('seed', '?')},"
        f" test accuracy {100 * float(info.get('test_acc', float('nan'))):.2f}%"
    )


def announcement(checkpoint: dict[str, Any]) -> str:
    """The one line a command prints when it uses the bundled model."""
    return f"{describe(checkpoint)} (pass --ckpt_path for your own)"


def resolve(ckpt_path: Optional[Union[str, Path]]) -> str:
    """The checkpoint a command without --ckpt_path uses: the user's own when given, else the bundled
    one, announced on stderr (stdout stays the command's results)."""
    if ckpt_path:
        return str(ckpt_path)
    from mnist_rnn.checkpoints import read_checkpoint

    print(announcement(read_checkpoint(BUNDLED_CKPT)), file=sys.stderr, flush=True)
    return str(BUNDLED_CKPT)


def load_model(ckpt_path: Optional[Union[str, Path]] = None) -> nn.Module:
    """The bundled model, or the model of a checkpoint written by `mnist-rnn fit`, ready to use.

    Returns a `torch.nn.Module` in eval mode that takes pixels (batch, 28, 28), uint8 or float in
    0..255, white ink on black as in MNIST (the input of `mnist-rnn export`'s ONNX file, see
    docs/export.md), and returns logits (batch, 10), in float32.
    """
    from mnist_rnn.inference import PixelsToLogits
    from mnist_rnn.inference import load_model as load_checkpoint_model

    loaded = load_checkpoint_model(ckpt_path or BUNDLED_CKPT)
    return PixelsToLogits(loaded.model, loaded.mean, loaded.std).eval()

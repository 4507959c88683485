"""The trained model that ships inside the package, and how it is made.

`mnist_rnn/assets/bundled.ckpt` is one checkpoint of the default config (conf/default.yaml), kept
to its weights: the optimizer, scheduler and callback states are dropped (it is meant to be
used, not resumed), while the model settings, the normalization and the training precision stay,
so it loads through `checkpoints.read_checkpoint` like any checkpoint `mnist-rnn fit` writes. Its
`bundled` entry records the config, the seed and the test accuracy `mnist-rnn test` measured on
it, which the commands that use it print in one line.

Made, or remade, with (docs/model-card.md):

    python -m mnist_rnn.bundled                  # mnist-rnn fit of the default config, then the above
    python -m mnist_rnn.bundled --from CKPT      # from a checkpoint of a default-config run instead
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from mnist_rnn.hardware import cpu_name

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


def slim(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint kept to what using the model needs; the weights are the same tensors."""
    return {key: checkpoint[key] for key in KEEP if key in checkpoint}


def _best_val_acc(checkpoint: dict[str, Any]) -> Optional[float]:
    from mnist_rnn.inference import training_state

    best = training_state(checkpoint).get("best") or {}
    return best.get("score")


def _run_seed(ckpt: Path) -> int:
    """The seed of the run a checkpoint comes from, read from the config.yaml `fit` saved beside it."""
    import yaml

    from mnist_rnn.errors import ConfigError

    config = ckpt.resolve().parent.parent / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{ckpt} has no run config.yaml two folders up; pass a checkpoint from runs/<name>/version_<N>/")
    return int(yaml.safe_load(config.read_text())["seed_everything"])


def _save(checkpoint: dict[str, Any], path: Path) -> None:
    # Through a file object, torch.save names the archive's folder "archive" rather than after the
    # (temporary) file, so the same weights give the same bytes on every rerun.
    with path.open("wb") as file:
        torch.save(checkpoint, file)


def make(output: Path, source: Optional[Path] = None) -> dict[str, Any]:
    """Write the bundled checkpoint to output (a default-config fit first unless source is given); return its info."""
    from mnist_rnn.checkpoints import read_checkpoint
    from mnist_rnn.cli import cli_main
    from mnist_rnn.errors import ConfigError

    # The commands below are given in Python on purpose; Lightning's caution against that concerns sys.argv.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    if source is None:
        fit = cli_main(["fit", "--trainer.logger.init_args.name", "bundle"])
        source = Path(fit.trainer.checkpoint_callback.best_model_path)
    checkpoint = read_checkpoint(source)
    kept = slim(checkpoint)
    info = {
        "config": "default",
        "seed": _run_seed(source),
        "source": source.name,
        "val_acc": _best_val_acc(checkpoint),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "torch": str(torch.__version__),  # a plain str: TorchVersion would be pickled code to the checked reader
        "command": "python -m mnist_rnn.bundled",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        _save({**kept, INFO: info}, staged)
        # The official test accuracy, measured the way a user will: `mnist-rnn test` on this very file.
        tested = cli_main(["test", "--ckpt_path", str(staged)])
        info["test_acc"] = float(tested.trainer.callback_metrics["test/acc"])
        _save({**kept, INFO: info}, staged)  # the same weights; only the record of their score is added
        size = staged.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"the bundled checkpoint would be {size:,} bytes, over {MAX_BYTES:,}; train a smaller model")
        os.replace(staged, output)
    finally:
        staged.unlink(missing_ok=True)
    return {**info, "bytes": output.stat().st_size}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mnist_rnn.bundled", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="a best checkpoint of a default-config run to bundle, instead of training one")  # fmt: skip
    parser.add_argument("--output", type=Path, default=BUNDLED_CKPT, help=f"where to write it (default {BUNDLED_CKPT})")
    args = parser.parse_args(argv)
    from mnist_rnn.errors import MnistRnnError

    try:
        info = make(args.output, args.source)
    except MnistRnnError as err:
        print(f"mnist-rnn: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    print(f"wrote {args.output} ({info['bytes']:,} bytes): {describe({INFO: info}).removeprefix('using ')}")


if __name__ == "__main__":
    main()

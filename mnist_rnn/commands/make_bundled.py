"""Makes the bundled model, mnist_rnn/assets/bundled.ckpt (docs/model-card.md):

    python -m mnist_rnn.commands.make_bundled                  # mnist-rnn fit of the default config, then test, then slim
    python -m mnist_rnn.commands.make_bundled --from CKPT      # from a checkpoint of a default-config run instead
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from mnist_rnn.commands.bundled import BUNDLED_CKPT, INFO, KEEP, MAX_BYTES, describe
from mnist_rnn.commands.cli import cli_main
from mnist_rnn.commands.inference import training_state
from mnist_rnn.commands.options import command_parser
from mnist_rnn.errors import ConfigError, MnistRnnError
from mnist_rnn.run.checkpoints import read_checkpoint
from mnist_rnn.run.folders import staged
from mnist_rnn.run.hardware import cores, cpu_name


def _run_seed(ckpt: Path) -> int:
    """The seed of the run a checkpoint comes from, read from the config.yaml `fit` saved beside it."""
    import yaml

    config = ckpt.resolve().parent.parent / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{ckpt} has no run config.yaml two folders up; pass a checkpoint from runs/<name>/version_<N>/")
    return int(yaml.safe_load(config.read_text())["seed_everything"])


def _save(checkpoint: dict[str, Any], path: Path) -> None:
    # Through a file object, torch.save names the archive's folder "archive" rather than after the
    # (temporary) file, so the same weights give the same bytes on every rerun.
    with path.open("wb") as file:
        torch.save(checkpoint, file)


def make(output: Path = BUNDLED_CKPT, source: Optional[Path] = None) -> dict[str, Any]:
    """Make the bundled model: a fit of the default config (or a given checkpoint of one), tested, then slimmed.

    Returns the info written into the checkpoint, and its size in bytes.

    Args:
        output: where to write it
        source: a best checkpoint of a default-config run to bundle, instead of training one
    """
    # The commands below are given in Python on purpose; Lightning's caution against that concerns sys.argv.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    if source is None:
        fit = cli_main(["fit", "--trainer.logger.init_args.name", "bundle"])
        source = Path(fit.trainer.checkpoint_callback.best_model_path)
    checkpoint = read_checkpoint(source)
    kept = {key: checkpoint[key] for key in KEEP if key in checkpoint}  # what using the model needs, the same weight tensors
    info = {
        "config": "default",
        "seed": _run_seed(source),
        "source": source.name,
        "val_acc": training_state(checkpoint).get("best", {}).get("score"),
        "machine": f"{cpu_name()}, {cores()} cores",
        "torch": str(torch.__version__),  # a plain str: TorchVersion would be pickled code to the checked reader
        "command": "python -m mnist_rnn.commands.make_bundled",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with staged(output) as staging:
        _save({**kept, INFO: info}, staging)
        # The official test accuracy, measured the way a user will: `mnist-rnn test` on this very file.
        tested = cli_main(["test", "--ckpt_path", str(staging)])
        info["test_acc"] = float(tested.trainer.callback_metrics["test/acc"])
        _save({**kept, INFO: info}, staging)  # the same weights; only the record of their score is added
        size = staging.stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(f"the bundled checkpoint would be {size:,} bytes, over {MAX_BYTES:,}; train a smaller model")
    return {**info, "bytes": output.stat().st_size}


def main(argv: Optional[list[str]] = None) -> None:
    parser = command_parser(make, "python -m mnist_rnn.commands.make_bundled", {"source": ("--from",)})
    options = parser.parse_args(argv)
    try:
        info = make(options.output, options.source)
    except MnistRnnError as err:
        print(f"mnist-rnn: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    print(f"wrote {options.output} ({info['bytes']:,} bytes): {describe({INFO: info}).removeprefix('using ')}")


if __name__ == "__main__":
    main()

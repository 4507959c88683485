"""The `mnist-rnn` command: a LightningCLI with fit, validate, test and predict.

Every setting lives in YAML (conf/default.yaml is read first, `-c FILE` on top of it, then
command-line flags); this file only adds what a config cannot express: choosing precision
and thread count for the machine, checking a `--ckpt_path` and continuing the run it belongs
to, and the messages that tell the user what happened.
"""

from __future__ import annotations

import inspect
import logging
import os
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_rnn import checkpoints
from mnist_rnn.callbacks import PredictionCSVWriter, default_progress_bar
from mnist_rnn.data import MNISTDataModule
from mnist_rnn.errors import CheckpointError, MnistRnnError, SkippedInputsError, TrainingStopped
from mnist_rnn.model import LSTMClassifier

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def config_file(name: str) -> str:
    """Path of one of the repository's conf/*.yaml files.

    A wheel ships them as mnist_rnn/conf/; a source checkout or editable install reads conf/.
    """
    packaged = Path(__file__).parent / "conf"
    folder = packaged if packaged.is_dir() else Path(__file__).parent.parent / "conf"
    return str(folder / name)


def auto_precision(accelerator: Any, batch_size: int) -> str:
    """bf16-mixed where the hardware computes bf16 natively and the step is bound by matrix work.

    Below batch 32 on a CPU a step is bound by per-op overhead, and autocast's casts make it
    slower, not faster (measured: LSTM(50) at batch 10 ran 12% slower in bf16); fp32 there.
    """
    on_gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    if str(accelerator) in ("auto", "cpu") and batch_size >= 32:
        native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return "bf16-mixed" if native_bf16 else "32-true"
    return "32-true"


def auto_threads(batch_size: int) -> int:
    """Threads for torch on the CPU.

    Small batches are bound by per-step overhead; a second thread gains little there and
    collapses the step rate when another process is busy on that core. Large batches are bound
    by matrix work and use every core this process may run on.
    """
    if batch_size < 32:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OneLineErrorParser(LightningArgumentParser):
    """Reports a bad option in one line, like the project's own errors, instead of a page of usage."""

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("MNIST_RNN_DEBUG"):
            super().error(message, ex)  # raises (while jsonargparse tries alternatives), or the full report
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        print(f"mnist-rnn: error: {' '.join(message.split())} (options: {prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class SaveFitConfig(SaveConfigCallback):
    """Save the run's config.yaml for fit only: test/predict must not touch a run's folder.

    A resumed run keeps the config.yaml it started with, so that `fit -c runs/.../config.yaml`
    still reruns it from scratch. (A new run always gets a folder of its own, see RunLogger.)
    """

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not (Path(trainer.log_dir or "") / self.config_filename).is_file():
            super().setup(trainer, pl_module, stage)


def runs_folder(config) -> Optional[Path]:
    """runs/<config name>/ of the configured logger: where `--ckpt_path last` looks."""
    logger = config.trainer.get("logger")
    init_args = logger.get("init_args") if hasattr(logger, "get") else None
    if not init_args or init_args.get("save_dir") is None or init_args.get("name") is None:
        return None
    return Path(init_args.save_dir) / init_args.name


class MnistRnnCLI(LightningCLI):
    checkpoint: Optional[dict[str, Any]] = None  # the --ckpt_path file's content, checked before anything runs

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--threads",
            type=Optional[int],
            default=None,
            help="CPU threads for torch; null picks 1 below batch size 32 (overhead-bound), all cores above.",
        )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            # Only predict writes predictions: its CSV writer is always there (--predictions.output),
            # whatever callbacks a config lists, and fit's configs do not carry its settings.
            parser.add_lightning_class_args(PredictionCSVWriter, "predictions")
        return parser

    def _parse_ckpt_path(self) -> None:
        """Resolve `--ckpt_path last`, refuse a bad checkpoint with a clear message, apply its model settings.

        Replaces LightningCLI's version, which reads the file unchecked (a damaged one ends in a
        stack trace) and knows nothing of `last`; like it, the checkpoint's model settings win
        over the config's, so the model built fits the weights.
        """
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if not config or not config.get("ckpt_path"):
            return
        path = checkpoints.resolve(config.ckpt_path, runs_folder(config))
        self.checkpoint = checkpoints.read_checkpoint(path)
        config.ckpt_path = str(path)
        hparams = dict(self.checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        known = inspect.signature(LSTMClassifier.__init__).parameters
        unknown = sorted(set(hparams) - set(known))
        if unknown:
            raise CheckpointError(
                f"checkpoint {path} was made for a different model (settings {', '.join(unknown)} are unknown"
                " here); pass a checkpoint of this LSTM classifier"
            )
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.trainer.precision is None:
            config.trainer.precision = auto_precision(config.trainer.accelerator, config.data.batch_size)
        threads = config.threads or auto_threads(config.data.batch_size)
        torch.set_num_threads(threads)
        if self.subcommand != "fit":
            # Evaluating a checkpoint prints its results; it does not open a new run folder.
            config.trainer.logger = False
        elif self.checkpoint is not None:
            self._continue_run(config)

    def _continue_run(self, config) -> None:
        """Resume `fit` from --ckpt_path: in the checkpoint's own run folder when it is that run's newest.

        Logging then goes on in the same TensorBoard run: the events an interrupted attempt wrote
        after its last checkpoint are hidden (SummaryWriter's purge_step), so no step goes back.
        Resuming from an older checkpoint opens a new run folder instead, leaving the newer
        checkpoints of its run untouched.
        """
        path = Path(config.ckpt_path)
        checkpoints.check_resumable(self.checkpoint, path, config.trainer.max_epochs)
        epoch, step = self.checkpoint.get("epoch", 0), self.checkpoint.get("global_step", 0)
        runs = runs_folder(config)
        run = checkpoints.run_of(path, runs) if runs is not None else None
        if run is not None:
            config.trainer.logger.init_args.version = checkpoints.version_of(run)
            config.trainer.logger.init_args.purge_step = step
            where = f"resuming {runs / run.name}"
        else:
            where = "resuming in a new run folder"
        print(f"{where} from {path} (epoch {epoch + 1}, after step {step})", flush=True)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.checkpoint is not None:
            checkpoints.check_fits(self.model, self.checkpoint, self.config[self.subcommand].ckpt_path)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        configured = config.get("callbacks") or []
        has_bar = any(isinstance(c, ProgressBar) for c in list(configured) + list(callbacks))
        if config.get("enable_progress_bar", True) is not False and not has_bar:
            callbacks = [*callbacks, default_progress_bar()]
        if os.environ.get("MNIST_RNN_SWEEP"):  # a trial of `mnist-rnn sweep`: report back to it (not saved in config.yaml)
            from mnist_rnn.sweep import trial_callbacks

            callbacks = [*callbacks, *trial_callbacks()]
        return super()._instantiate_trainer(config, callbacks)

    def after_fit(self) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero or trainer.checkpoint_callback is None:
            return
        ckpt = trainer.checkpoint_callback
        # Without a validation score there is no best checkpoint; the newest one is the run's result.
        best = ckpt.best_model_path or str(checkpoints.newest_in(Path(ckpt.dirpath or ".")) or "")
        score = ckpt.best_model_score
        lines = [f"best checkpoint: {best or '(none saved)'}"]
        if score is not None:
            lines.append(f"best {ckpt.monitor}: {float(score):.4f}")
        if trainer.logger is not None and log_dir:
            lines.append(f"logs: {log_dir}  (view with: tensorboard --logdir {Path(log_dir).parent.parent})")
        if best:
            command = ["mnist-rnn", "test"]
            saved_config = Path(log_dir or "") / "config.yaml"
            if saved_config.is_file():
                command += ["-c", str(saved_config)]
            command += ["--ckpt_path", best]
            lines.append("test it: " + shlex.join(command))
        print("\n".join(lines), flush=True)

    def after_predict(self) -> None:
        skipped = self.datamodule.skipped
        if not skipped:
            return
        for path, reason in skipped:
            print(f"mnist-rnn: skipped {path}: {reason}", file=sys.stderr)
        total = len(skipped) + len(self.datamodule.datasets["predict"])
        raise SkippedInputsError(
            f"{len(skipped)} of {total} inputs could not be read and have no prediction (named above);"
            " replace or remove them"
        )


class _DropTips(logging.Filter):
    """Lightning's advertising tips say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


def _quiet_noise() -> None:
    # The dataset is in memory: worker processes would only copy it.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Lightning's model summary cannot size bf16 weights; the parameter count it shows is right.
    warnings.filterwarnings("ignore", message=r".*is not supported by the model summary.*")
    # A deprecation inside Lightning itself, not in this project.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Evaluating a checkpoint outside its run folder: ModelCheckpoint has nothing to resume there.
    warnings.filterwarnings("ignore", message=r".*The dirpath has changed from.*")
    # A resumed run writes into its own, non-empty checkpoints folder; a new run always gets an empty one.
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    # Lightning looks for the position in the epoch on the loader; MNISTDataModule keeps it (state_dict).
    warnings.filterwarnings("ignore", message=r".*ended before the epoch ended and your dataloader is not resumable.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())


def cli_main(args: Optional[list[str]] = None) -> MnistRnnCLI:
    _quiet_noise()
    try:
        return _build_and_run(args)
    finally:
        # Lightning leaves a DDP process group open when the run ends; left to interpreter
        # shutdown, gloo's threads can abort the process ("terminate called without an active
        # exception") after the work is done. Every rank closes it here, together.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _build_and_run(args: Optional[list[str]]) -> MnistRnnCLI:
    return MnistRnnCLI(
        LSTMClassifier,
        MNISTDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        save_config_callback=SaveFitConfig,
        parser_class=OneLineErrorParser,
        # default_config_files must be given per subcommand: given once, it is ignored for a flat YAML.
        parser_kwargs={
            "prog": "mnist-rnn",  # also when started as `python -m mnist_rnn.cli`
            **{sub: {"default_config_files": [config_file("default.yaml")]} for sub in SUBCOMMANDS},
        },
        args=args,
    )


def resume_command(args: list[str]) -> str:
    """The command that continues a stopped run: the same one, with `--ckpt_path last`."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg == "--ckpt_path":
            skip_value = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["mnist-rnn", *kept, "--ckpt_path", checkpoints.LAST])


def main(args: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["sweep"]:  # not a LightningCLI subcommand: many fits, see mnist_rnn/sweep.py
            from mnist_rnn.sweep import sweep_main

            sweep_main(argv[1:])
            return
        cli_main(args)
    except MnistRnnError as err:
        if os.environ.get("MNIST_RNN_DEBUG"):
            raise
        if isinstance(err, TrainingStopped):
            command = resume_command(sys.argv[1:] if args is None else list(args))
            print(f"mnist-rnn: {err}\nresume with: {command}", file=sys.stderr)
        else:
            print(f"mnist-rnn: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    except SIGTERMException:
        # Lightning's own SIGTERM handling, outside training: it would otherwise exit with status 0.
        print("mnist-rnn: stopped by SIGTERM", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from None


if __name__ == "__main__":
    main()

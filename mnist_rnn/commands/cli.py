"""`mnist-rnn fit/validate/test/predict`: the LightningCLI that wires the project's pieces together.

Settings come from conf/default.yaml, then `-c FILE`, then flags; a `--ckpt_path` is read once, checked and
applied before anything is built, and what was read is what the Trainer loads; every bad input is one line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch
import yaml
from jsonargparse.typing import PositiveInt
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from mnist_rnn.commands import bundled
from mnist_rnn.commands.options import short_error
from mnist_rnn.commands.predictions import PredictionCSVWriter, report_skipped
from mnist_rnn.data.datamodule import MNISTDataModule, check_source
from mnist_rnn.errors import ConfigError, usage_error
from mnist_rnn.model.classifier import RecurrentClassifier
from mnist_rnn.run import checkpoints, hardware, resume, steps_per_execution, trainer_settings
from mnist_rnn.run import folders as runs
from mnist_rnn.run.progress import SummaryWithoutFlops, default_progress_bar, fit_report
from mnist_rnn.run.warning_filters import ignore_known_warnings

SUBCOMMANDS = ("fit", "validate", "test", "predict")  # LightningCLI's (commands.py dispatches them here, by the same names)


def config_file(name: str) -> str:
    """Path of a conf/*.yaml file: mnist_rnn/conf/ in a wheel, conf/ in a source checkout or editable install."""
    package = Path(__file__).parents[1]
    folder = package / "conf" if (package / "conf").is_dir() else package.parent / "conf"
    return str(folder / name)


class OneLineErrorParser(LightningArgumentParser):
    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("MNIST_RNN_DEBUG"):
            super().error(message, ex)  # raises (while jsonargparse tries alternatives), or the full report
        parser = getattr(ex, "subcommand_parser", None) or self
        usage_error(short_error(" ".join(message.split())), parser.prog.replace(" [options]", ""))


class SaveFitConfig(SaveConfigCallback):
    """Save the run's config.yaml for fit only: test/predict must not touch a run's folder. A resumed run keeps
    the one it started with, so that `fit -c runs/.../config.yaml` still reruns it from scratch."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        config = Path(trainer.log_dir or "") / self.config_filename
        if stage == "fit" and not config.is_file():
            with runs.reporting_full_disk(config, config.parent, fresh=True):  # a torn config.yaml is removed
                super().setup(trainer, pl_module, stage)


class MnistRnnCLI(LightningCLI):
    checkpoint: Optional[dict[str, Any]] = None  # the --ckpt_path file's content, checked before anything runs
    checkpoint_path: Optional[str] = None  # its path, from `last` or the bundled model too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.subcommand_parsers: dict[str, LightningArgumentParser] = {}  # by name, from add_arguments_to_parser
        try:
            super().__init__(*args, **kwargs)
        except MisconfigurationException as err:  # what trainer_settings does not check, in Lightning's own words
            if os.environ.get("MNIST_RNN_DEBUG"):
                raise
            raise ConfigError(f"Lightning refuses the settings: {' '.join(str(err).split())} (see mnist-rnn fit --help)") from None
        except RuntimeError as err:  # torch.OutOfMemoryError is one: named with the running command's batch sizes
            oom = hardware.out_of_memory(err, self.config[self.subcommand].data) if getattr(self, "subcommand", None) else None
            if oom is None or os.environ.get("MNIST_RNN_DEBUG"):
                raise
            raise oom from None
        finally:
            # Lightning leaves a DDP process group open; at interpreter shutdown gloo's threads can abort the
            # finished process ("terminate called without an active exception"). Every rank closes it here, together.
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    def add_arguments_to_parser(self, parser) -> None:
        self.subcommand_parsers[parser.prog.removeprefix("mnist-rnn ")] = parser  # cli_main's prog for each
        parser.add_argument(
            "--threads",
            type=Optional[PositiveInt],
            default=None,
            help="CPU threads for torch; null picks 1 below batch size 32 (overhead-bound), all cores above.",
        )
        # The data module serves as many batches per Lightning step as the model takes optimizer steps.
        parser.link_arguments("model.steps_per_execution", "data.steps_per_execution")
        # Only predict writes predictions: its CSV writer is always there, whatever callbacks a config lists, and
        # fit's configs lack its settings. The prog is cli_main's (jsonargparse replaces it only after this hook).
        if parser.prog == "mnist-rnn predict":
            parser.add_lightning_class_args(PredictionCSVWriter, "predictions")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Lightning's, without its warning about `args` beside sys.argv: cli_main passes the command line itself.
        self.config = parser.parse_args(args)
        # The checkpoint read once and checked before anything is built; `last` and the bundled model are ours.
        self.apply_checkpoint()
        if self.checkpoint_path:
            # LightningCLI's next step (lightning 2.6.6's _parse_ckpt_path) reads the file again, unchecked, for the model
            # settings apply_checkpoint applied: it finds no path, which before_instantiate_classes puts back.
            self.config[self.config.subcommand].ckpt_path = None

    def apply_checkpoint(self) -> None:
        """Name fit's run; resolve `--ckpt_path last`, check the checkpoint, and apply its settings.

        As in Lightning, the checkpoint's model settings win over the config's, so the model fits the weights;
        so do its normalization (and fit's run data settings). An explicit setting that contradicts it is refused.
        """
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if not config:
            return
        trainer_settings.check_seed(config.get("seed_everything"))  # LightningCLI seeds before before_instantiate_classes
        if config.get("ckpt_path") == "":  # an unset shell variable: never the bundled model or a fresh run instead
            raise ConfigError("--ckpt_path is empty; pass a checkpoint file (runs/<config>/version_<N>/checkpoints/*.ckpt),"
                              " last, or leave it out")  # fmt: skip
        if subcommand == "fit":
            runs.name_run(config)
        bundled_model = subcommand != "fit" and not config.get("ckpt_path")
        if bundled_model:  # evaluating nothing but random weights would be a silent wrong run
            config.ckpt_path = str(bundled.BUNDLED_CKPT)
        if not config.get("ckpt_path"):
            return  # fit from scratch
        found_by_last = config.ckpt_path == resume.LAST
        path = resume.resolve(config.ckpt_path, runs.runs_folder(config))
        self.checkpoint = checkpoints.read_checkpoint(path)
        if bundled_model:
            print(bundled.announcement(self.checkpoint), file=sys.stderr, flush=True)
        config.ckpt_path = str(path)
        data_keys = checkpoints.RUN_DATA if subcommand == "fit" else checkpoints.PREPROCESSING
        saved = checkpoints.saved_settings(self.checkpoint, path, RecurrentClassifier, data_keys)
        # `last` must find this config's own run: its length must match too. An explicit checkpoint
        # may go on for longer (a schedule built for another length is refused by resume.py).
        checked = dict(saved, trainer=resume.saved_schedule(path) if found_by_last and subcommand == "fit" else {})
        defaults = self.subcommand_parsers[subcommand].get_defaults()  # the command without its own settings
        conflict = checkpoints.contradiction(config, defaults, checked)
        if conflict is not None:
            raise resume.mismatch_error(path, found_by_last, *conflict)
        self.config = self.parser.parse_object({subcommand: saved}, self.config)
        self.checkpoint_path = config.ckpt_path

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if self.checkpoint_path:
            config.ckpt_path = self.checkpoint_path
        if self.subcommand == "fit":
            # The model refuses K > 1 with its weight average itself (RecurrentClassifier.__init__); the Trainer's part here.
            steps_per_execution.check_settings(config.model.steps_per_execution, config.trainer.gradient_clip_val)
        trainer_settings.check(config.trainer, self.subcommand)
        check_source(config.data.data_dir, config.data.download, config.data.val_size, self.subcommand in ("fit", "validate"))
        hardware.check_devices(config.trainer.accelerator, config.trainer.devices, config.trainer.strategy)
        if config.trainer.precision is None:
            config.trainer.precision = self._precision(config)
        else:
            hardware.check_precision(config.trainer.precision, config.trainer.accelerator, config.model.cell)
        torch.set_num_threads(config.threads or hardware.auto_threads(config.data.batch_size))
        if self.subcommand != "fit":
            # Evaluating a checkpoint prints its results; it does not open a new run folder.
            config.trainer.logger = False
        elif self.checkpoint is not None:
            resume.continue_run(config, self.checkpoint)

    def _precision(self, config) -> str:
        """A checkpoint is evaluated and resumed in the precision it was trained in, where this machine
        runs it (else fp32, said in one line); without a checkpoint the machine decides."""
        checkpoint = self.checkpoint or {}
        if checkpoint.get("precision"):
            precision, note = hardware.evaluation_precision(str(checkpoint["precision"]), config.trainer.accelerator, config.model.cell)
            if note:
                print(f"mnist-rnn: {note}", flush=True)
            return precision
        # Checkpoints from before the precision was saved: what training chose, from its batch size.
        trained_batch = (checkpoint.get("datamodule_hyper_parameters") or {}).get("batch_size", config.data.batch_size)
        return hardware.auto_precision(config.trainer.accelerator, trained_batch, config.model.sequence, config.model.cell)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        if self.checkpoint is not None:
            checkpoints.check_fits(self.model, self.checkpoint, self.checkpoint_path)
            checkpoint_io = self.trainer.strategy.checkpoint_io  # the config's plugin: SafeCheckpointIO unless replaced
            if isinstance(checkpoint_io, checkpoints.SafeCheckpointIO):
                checkpoint_io.hand_over(self.checkpoint_path, self.checkpoint)  # the Trainer loads what was read

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # The project's progress display, unless the config brings a progress bar or turns it off.
        trainer = self.config_init[self.subcommand].trainer
        configured = trainer.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        extra = []
        for switch, kind, make in (("enable_progress_bar", ProgressBar, default_progress_bar),
                                   ("enable_model_summary", ModelSummary, SummaryWithoutFlops)):  # fmt: skip
            if trainer.get(switch, True) is not False and not any(isinstance(c, kind) for c in configured):
                extra.append(make())
        if extra:  # after the caller's persistent callbacks (cli_main's callbacks)
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*self.trainer_defaults.get("callbacks", []), *extra]}
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        report = fit_report(self.trainer)  # every rank asks: the log folder is agreed collectively under DDP
        if report:
            print(report, flush=True)

    def after_predict(self) -> None:
        report_skipped(self.datamodule)


def drop_tips(record: logging.LogRecord) -> bool:
    """Lightning's advertising tips, and its note that our summary replaces its own, say nothing about the run."""
    message = record.getMessage()
    return "Tip:" not in message and "Skipping setting a default `ModelSummary`" not in message


def bundled_configs(args: list[str]) -> list[str]:
    """`-c seed` (or `-c seed.yaml`) names the bundled conf/seed.yaml when no such file is here,
    so the configs work from an installed wheel as from a source checkout."""
    def resolve(value: str) -> str:
        if os.path.exists(value) or os.sep in value or "/" in value:
            return check_config(value)
        bundled = config_file(value if value.endswith((".yaml", ".yml")) else f"{value}.yaml")
        return bundled if os.path.isfile(bundled) else value

    resolved, take_next = [], False
    for arg in args:
        if take_next:
            arg, take_next = resolve(arg), False
        elif arg in ("-c", "--config"):
            take_next = True
        elif arg.startswith("--config="):
            arg = "--config=" + resolve(arg.removeprefix("--config="))
        resolved.append(arg)
    return resolved


def check_config(path: str) -> str:
    """A -c file that jsonargparse would report in a stack trace or a puzzle (empty, not text, not YAML, not a
    mapping) is one line; a missing file or a folder it names well itself."""
    if not os.path.isfile(path):
        return path
    try:
        settings = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"-c {path} cannot be read ({err.strerror}); fix its permissions") from None
    except UnicodeDecodeError:
        raise ConfigError(f"-c {path} is not a text file (not UTF-8); pass a YAML config such as conf/tiny.yaml") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"-c {path} is not valid YAML ({where}{getattr(err, 'problem', None) or err});"
                          " fix that line (conf/tiny.yaml shows the form)") from None  # fmt: skip
    if not isinstance(settings, dict):
        held = "nothing" if settings is None else f"a {type(settings).__name__}"
        raise ConfigError(f"-c {path} holds {held}, not settings; a config is a YAML mapping like conf/tiny.yaml")
    return path


def cli_main(args: Optional[list[str]] = None, callbacks: tuple[Callback, ...] = ()) -> MnistRnnCLI:
    """`callbacks`: added to the Trainer but not to the run's config.yaml (LightningCLI's trainer_defaults)."""
    ignore_known_warnings()  # Lightning's warnings that say nothing about a run of this project
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(drop_tips)
    hardware.skip_gpu_probe_without_gpu()
    return MnistRnnCLI(
        RecurrentClassifier,
        MNISTDataModule,
        subclass_mode_model=False,
        subclass_mode_data=False,
        save_config_callback=SaveFitConfig,
        parser_class=OneLineErrorParser,
        trainer_defaults={"callbacks": list(callbacks)},
        # default_config_files must be given per subcommand: given once, it is ignored for a flat YAML.
        parser_kwargs={
            "prog": "mnist-rnn",  # also when started as `python -m mnist_rnn`
            "epilog": "Other commands: serve (draw a digit in the browser; a JSON API), export (to ONNX and"
            " torch.export) and sweep (seeds and hyperparameter searches); see mnist-rnn serve --help,"
            " mnist-rnn export --help and mnist-rnn sweep --help.",
            **{sub: {"default_config_files": [config_file("default.yaml")], "prog": f"mnist-rnn {sub}"} for sub in SUBCOMMANDS},
        },
        args=bundled_configs(sys.argv[1:] if args is None else list(args)),
    )

"""The exceptions the CLI turns into a short message instead of a stack trace."""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path
from typing import NoReturn, Optional, Union


class MnistRnnError(Exception):
    """A problem the user can fix: the message names the culprit and the fix."""

    exit_code = 2


class DatasetError(MnistRnnError):
    """A dataset file is missing, truncated, altered or not in MNIST's IDX format."""


class ConfigError(MnistRnnError, ValueError):
    """A setting is out of range; raised before any training starts."""


class PredictInputError(MnistRnnError):
    """The images to predict cannot be found or read: an empty folder, a pattern matching nothing, a bad file."""


class SkippedInputsError(PredictInputError):
    """Some images could not be read: the others were predicted, these are missing from the CSV."""


class PredictOutputError(MnistRnnError):
    """The predictions cannot be written where they were asked for; raised before predicting."""


class CheckpointError(MnistRnnError):
    """A checkpoint file is missing, damaged, unsafe to load, or does not fit the model or the run."""


class OutputError(MnistRnnError):
    """A run folder or a checkpoint cannot be written."""


class TrainingDiverged(MnistRnnError):
    """The loss or the weights stopped being finite numbers; nothing of that state was saved."""


class TrainingStopped(MnistRnnError):
    """Training stopped on a signal after saving a checkpoint; the CLI adds the command that resumes it."""

    def __init__(self, message: str, signum: int, report: bool = True) -> None:
        super().__init__(message)
        # The shell's convention for a process ended by a signal: 130 for SIGINT, 143 for SIGTERM.
        self.exit_code = 128 + signum
        # Under DDP every rank stops; only the launching one tells the user.
        self.report = report


class ServeError(MnistRnnError):
    """`mnist-rnn serve` cannot start: its address is taken, not this machine's, or not allowed."""


class ExportError(MnistRnnError):
    """`mnist-rnn export` cannot write its file, or the exported model disagrees with PyTorch."""


class MissingExtraError(MnistRnnError):
    """A command beyond fit/validate/test/predict needs libraries of an extra that is not installed."""


def is_disk_full(err: BaseException) -> bool:  # ENOSPC, or SQLite's own words (the sweep's study, through sqlalchemy)
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "database or disk is full" in str(err)


def disk_full(path: Union[str, Path], then: str, needed: Optional[int] = None) -> OutputError:
    """The one line for a write that failed for lack of space: the file, the space free (and needed), what next."""
    folder = Path(path).parent
    while not folder.is_dir() and folder != folder.parent:  # measured where the file would have been
        folder = folder.parent
    space = f"{_size(shutil.disk_usage(folder).free)} free" + (f", about {_size(needed)} needed" if needed else "")
    return OutputError(f"cannot write {path}: the disk is full ({space}); {then}")


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def usage_error(message: str, prog: str) -> NoReturn:
    """A bad option in one line, like the project's own errors, instead of a page of usage (cli.py's parser too)."""
    print(f"mnist-rnn: error: {' '.join(message.split())} (options: {prog} --help)", file=sys.stderr)
    raise SystemExit(2)

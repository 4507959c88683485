"""Run folders (runs/<config>/version_<N>/, one per `fit`, never shared): a run's name, a config's runs and
their newest checkpoint, the logger that claims a folder, and how a file is written whole or not at all (`staged`)."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Union

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from mnist_rnn.errors import OutputError, disk_full, is_disk_full


def newest_in(folder: Path) -> Optional[Path]:
    """The most recently written checkpoint in a folder, if any."""
    files = [p for p in folder.glob("*.ckpt") if p.is_file()] if folder.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def version_of(folder: Path) -> Optional[int]:
    """N for a run folder named version_<N>, else None."""
    number = folder.name.removeprefix("version_")
    return int(number) if folder.name.startswith("version_") and number.isdigit() else None


def newest_checkpoint(runs: Path) -> Optional[Path]:
    """The newest checkpoint of the newest run (highest N) of a config that has one: a run killed before its first
    checkpoint has nothing to resume and is passed over."""
    folders = [p for p in runs.glob("version_*") if p.is_dir() and version_of(p) is not None]
    for run in sorted(folders, key=version_of, reverse=True):
        found = newest_in(run / "checkpoints")
        if found is not None:
            return found
    return None


def logger_args(config) -> Any:
    """The configured logger's init_args, or None when it has none."""
    logger = config.trainer.get("logger")
    return logger.get("init_args") if hasattr(logger, "get") else None


def runs_folder(config) -> Optional[Path]:
    """runs/<config name>/ of the configured logger: where `--ckpt_path last` looks."""
    init_args = logger_args(config)
    if not init_args or init_args.get("save_dir") is None or init_args.get("name") is None:
        return None
    return Path(init_args.save_dir) / init_args.name


def name_run(config) -> None:
    """A run is named after the config that made it, so `--ckpt_path last` finds that config's runs: a logger
    name given in a config or a flag is kept, else the last `-c FILE` names it (runs/<stem>/), else runs/default/."""
    init_args = logger_args(config)
    if not init_args or "name" not in init_args or init_args.get("name") is not None:
        return
    files = [str(f) for f in (config.get("config") or [])]
    init_args.name = Path(files[-1]).stem if files else "default"


class RunLogger(TensorBoardLogger):
    """TensorBoardLogger that claims its version folder atomically, flushes at every checkpoint, leaves out
    Lightning's `epoch` counter, and reports a full disk in one line naming the file.

    TensorBoardLogger picks the version after the highest on disk, so two runs started together would
    share version_N; `os.mkdir`, which fails on an existing folder, makes the pick and the claim one step.
    """

    def __init__(self, *args: Any, purge_step: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, purge_step=purge_step, **kwargs)
        # Set by resume.continue_run to the checkpoint's step. A resumed run logs below it the points of that step's
        # end that the checkpoint came before: the validation owed (resume.OwedValidation), or an epoch's end that
        # Lightning runs again. The interrupted attempt logged them if the kill came after: they are logged once.
        self.resumed_at = purge_step
        self._logged_below: Optional[set[tuple[str, int]]] = None

    def _get_next_version(self) -> int:
        if rank_zero_only.rank != 0:
            return super()._get_next_version()  # other processes of one run take rank 0's folder, not one of their own
        try:
            os.makedirs(self.root_dir, exist_ok=True)
        except OSError as err:
            raise _unwritable(self.root_dir, err) from None
        version = super()._get_next_version()
        while True:
            folder = os.path.join(self.root_dir, f"version_{version}")
            try:
                os.mkdir(folder)
                return version
            except FileExistsError:
                version += 1
            except OSError as err:
                raise _unwritable(folder, err) from None

    @property
    def experiment(self) -> Any:
        writer = super().experiment
        if rank_zero_only.rank != 0:
            return writer  # Lightning's stand-in, which writes nothing
        guarded = getattr(self, "_guarded", None)
        if guarded is None or guarded.writer is not writer:  # made once per writer: every scalar comes through here
            _quiet_writer_thread()
            guarded = self._guarded = _GuardedWriter(writer, self)
        return guarded

    def writing(self, target: Optional[str] = None, fresh: bool = False):
        """A full disk inside: one line naming target (default: this run's events file)."""
        return reporting_full_disk(target or self.events_file, self.log_dir, fresh)  # the file looked up only on a failure

    def events_file(self) -> str:
        mine = sorted(glob.glob(os.path.join(glob.escape(self.log_dir), f"events.out.tfevents.*.{os.getpid()}.*")))
        return mine[-1] if mine else os.path.join(self.log_dir, "events.out.tfevents.*")

    def logged_below(self) -> set[tuple[str, int]]:
        """The (tag, step) of every scalar the run's earlier attempts logged below the step it resumed at."""
        if self._logged_below is None:
            mine = f".{os.getpid()}."
            files = [f for f in glob.glob(os.path.join(glob.escape(self.log_dir), "events.out.tfevents.*")) if mine not in f]
            self._logged_below = {
                (value.tag, event.step)
                for path in files for event in EventFileLoader(path).Load() if event.step < self.resumed_at
                for value in event.summary.value
            }  # fmt: skip
        return self._logged_below

    @rank_zero_only
    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        with self.writing():  # Lightning's writes past the SummaryWriter, to its file writer
            super().log_hyperparams(*args, **kwargs)

    @rank_zero_only
    def save(self) -> None:
        with self.writing(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), fresh=True):
            super().save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        try:
            with self.writing():
                super().finalize(status)
        except OutputError:
            if status != "failed":
                raise
            # Lightning finalizes a run that failed while it handles the error; the first error is the one to report.

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # What was logged up to a checkpoint reaches the disk with it (SummaryWriter otherwise keeps up to two
        # minutes in memory), so a run resumed from it has no gap in its curves; the checkpoint's own step logs
        # its scalars just after the checkpoint callbacks ran: those are flushed as they come (log_metrics).
        self.experiment.flush()
        self._flush_next = True

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        # Lightning adds its `epoch` counter to every dict it logs; TensorBoard would open on it (its groups sort by
        # name, and the first two start open: docs/dashboards.md), a staircase that says nothing the step axis does not.
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if self.resumed_at is not None and step is not None and step < self.resumed_at:
            metrics = {k: v for k, v in metrics.items() if (k, step) not in self.logged_below()}
        if not metrics:
            return  # never a repeated point, nor one going back (see __init__)
        try:
            super().log_metrics(metrics, step)
        except ValueError as err:  # Lightning calls any error of add_scalar a value it cannot log
            if isinstance(err.__cause__, OutputError):
                raise err.__cause__ from None
            raise
        if getattr(self, "_flush_next", False):
            self._flush_next = False
            self.experiment.flush()


def _unwritable(folder: str, err: OSError) -> OutputError:
    return OutputError(
        f"cannot create the run folder {folder} ({err.strerror or err}); choose a writable"
        " --trainer.logger.init_args.save_dir or fix the folder's permissions"
    )


def resume_hint(checkpoints: Union[str, Path]) -> str:
    """What to do once a fit stopped on a write it could not make: resume from its checkpoints, or start again."""
    if any(Path(checkpoints).glob("*.ckpt")):
        return f"the checkpoints in {checkpoints} are intact; free space, then run the same command with --ckpt_path last"
    return "no checkpoint was written yet; free space, then run the same command again"


@contextlib.contextmanager
def reporting_full_disk(target: Union[str, Path, Callable[[], str]], run_dir: Union[str, Path, None] = None, fresh: bool = False,
                        then: Optional[str] = None):
    """A full disk inside: one line naming target, then `then` (by default: how to resume the run in run_dir); target
    is removed if fresh (written whole inside) and new, so that no torn file keeps a final name."""
    new = fresh and not os.path.exists(target)
    try:
        yield
    except Exception as err:  # OSError, or a database driver's error (is_disk_full reads SQLite's words)
        if not is_disk_full(err):
            raise
        target = target() if callable(target) else target
        if new:
            Path(target).unlink(missing_ok=True)
        raise disk_full(target, then or resume_hint(Path(run_dir) / "checkpoints")) from None


NOTHING_WRITTEN = "nothing was written there; free space, then run the same command again"


@contextlib.contextmanager
def staged(target: Union[str, Path], then: str = NOTHING_WRITTEN, needed: Optional[int] = None, suffix: str = "", overwrite: bool = True):
    """A file written whole or not at all: the block writes the path yielded, which takes target's name (`commit`)
    when the block ends well and is removed otherwise; a full disk is one line naming target, then `then`."""
    target = Path(target)
    staging = staging_path(target, suffix)
    try:
        yield staging
        commit(staging, target, overwrite)
    except OSError as err:
        staging.unlink(missing_ok=True)  # first, so that the space it took counts as free
        if is_disk_full(err):
            raise disk_full(target, then, needed) from None
        raise
    finally:
        staging.unlink(missing_ok=True)


def staging_path(target: Path, suffix: str = "") -> Path:
    """Where a file is written before it takes its name: hidden, beside it, this process's own."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp{suffix}")


def commit(staging: Path, target: Path, overwrite: bool = True) -> None:
    """A whole staged file takes target's name, synced to disk before and after (a kill or a power cut leaves
    the old file or the new one); without overwrite, never over a file that appeared meanwhile."""
    _fsync(staging, os.O_RDWR)  # written to: Windows syncs only a handle that can write
    if overwrite:
        os.replace(staging, target)
    else:
        os.link(staging, target)  # fails if target exists, atomically
    with contextlib.suppress(OSError):  # some platforms and file systems cannot sync a folder; the rename is done
        _fsync(target.parent, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _GuardedWriter:
    """The run's SummaryWriter, each of its calls under RunLogger.writing."""

    def __init__(self, writer: Any, logger: RunLogger) -> None:
        self.writer, self.logger = writer, logger

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.writer, name)
        if not callable(attr):
            return attr
        target = self.logger.log_dir if name == "add_embedding" else None  # the projector's files, beside the events

        @functools.wraps(attr)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self.logger.writing(target):
                return attr(*args, **kwargs)

        return guarded


def _quiet_writer_thread() -> None:
    """TensorBoard writes events in a thread of its own, which dies on a full disk printing its trace; its writer
    raises the same error in the run's own thread at the next call, where RunLogger reports it in one line."""
    previous = threading.excepthook
    if getattr(previous, "quiet_on_full_disk", False):
        return

    def hook(args: Any) -> None:
        if not (is_disk_full(args.exc_value) and type(args.thread).__module__.startswith("tensorboard.")):
            previous(args)

    hook.quiet_on_full_disk = True
    threading.excepthook = hook

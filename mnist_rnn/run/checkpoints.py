"""Checkpoint files: written atomically, read without running code, and checked before use.

Every read goes through `read_checkpoint`: the file read once, the zip archive's CRCs checked, then `weights_only=True`
(tensors and plain containers, never a pickled object), so a damaged or booby-trapped file is refused in a line naming
it, not a stack trace or a silently wrong model. Our checkpoints need nothing beyond torch's weights-only allow-list, so
none is added. A command reads its checkpoint once: what it read is handed to the Trainer (`SafeCheckpointIO.hand_over`).
"""

from __future__ import annotations

import inspect
import io
import time
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.serialization import get_unsafe_globals_in_checkpoint

from mnist_rnn.errors import CheckpointError, OutputError
from mnist_rnn.run.folders import resume_hint, staged

# Checkpoints written before the network moved into its own module (mnist-rnn 0.1.0 as of
# 2026-11-30) name the weights rnn.*, head.* and permutation; they now live under net.
_LEGACY_PREFIXES = ("rnn.", "head.", "permutation")


def upgraded_key(key: str) -> str:
    """A weight's name under net.*, whether written before or after the move."""
    return f"net.{key}" if key.startswith(_LEGACY_PREFIXES) else key


_FIX = "pass a checkpoint file written by `mnist-rnn fit` (runs/<config>/version_<N>/checkpoints/*.ckpt)"


def read_checkpoint(path: Union[str, Path], map_location: Union[str, Callable, None] = "cpu") -> dict[str, Any]:
    """The content of a Lightning checkpoint file, or a CheckpointError that says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; {_FIX}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; {_FIX}")
    try:
        data = path.read_bytes()  # once: every check below, and the load, see these same bytes
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err.strerror or err}); fix its permissions or {_FIX}") from None
    # torch.save writes a zip archive: checking it first tells a truncated or corrupted file from something that
    # never was a checkpoint, and its CRCs catch flipped bits that torch.load itself would read without noticing.
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            damaged = archive.testzip()
    except Exception:  # zipfile reports damage as BadZipFile, EOFError, UnicodeDecodeError, struct.error, ...
        if data.startswith(b"PK\x03\x04"):
            raise CheckpointError(f"checkpoint {path} is truncated or corrupted; {_FIX}") from None
        raise CheckpointError(f"{path} is not a checkpoint (not a torch.save archive); {_FIX}") from None
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path} is corrupted (bad checksum in {damaged}); {_FIX}")
    try:
        unsafe = get_unsafe_globals_in_checkpoint(io.BytesIO(data))  # what the pickle would call, without calling any
    except Exception:  # a zip archive, but not one torch.save wrote
        raise CheckpointError(f"{path} is not a checkpoint (not a torch.save archive); {_FIX}") from None
    if unsafe:
        raise CheckpointError(
            f"checkpoint {path} holds pickled code ({', '.join(unsafe)}) and loading it could run that code,"
            " so it is refused; use checkpoints written by mnist-rnn"
        )
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # torch reports damage as RuntimeError, UnpicklingError, KeyError, ...
        reason = (str(err).splitlines() or [""])[0]
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {reason}); {_FIX}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict); {_FIX}")
    return checkpoint


# What a checkpoint decides beyond its weights: every model setting, and the data settings that turn
# an image into the model's input. A resumed fit also keeps those that define its run.
PREPROCESSING = ("mean", "std")
RUN_DATA = ("batch_size", "val_size", "split_seed", "max_shift", *PREPROCESSING)


def saved_settings(checkpoint: dict[str, Any], path: Union[str, Path], model_class: type, data_keys: tuple[str, ...]) -> dict:
    """{"model": {...}, "data": {...}}: the settings a checkpoint was trained with; refused when model_class has
    no such model settings (a checkpoint of another model)."""
    model = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    # Settings added since the checkpoint was written: it was trained without them, as their "off" value says.
    model = {**getattr(model_class, "ABSENT_FROM_OLDER_CHECKPOINTS", {}), **model}
    known = inspect.signature(model_class.__init__).parameters
    unknown = sorted(set(model) - set(known))
    if unknown:
        raise CheckpointError(
            f"checkpoint {path} was made for a different model (settings {', '.join(unknown)} are unknown"
            " here); pass a checkpoint of this LSTM classifier"
        )
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    return {"model": model, "data": {k: data[k] for k in data_keys if k in data and data[k] != "auto"}}


def contradiction(given, defaults, saved: dict[str, dict[str, Any]]) -> Optional[tuple[str, Any, Any]]:
    """The first setting the command gives explicitly (unlike its default) that differs from the saved
    one: (name, saved value, given value). `auto` gives nothing: it means "whatever is known"."""
    for section, values in saved.items():
        for key, value in values.items():
            mine, default = given[section].get(key), defaults[section].get(key)
            if mine not in (None, "auto", default, value):
                return f"{section}.{key}", value, mine
    return None


def check_fits(model: torch.nn.Module, checkpoint: dict[str, Any], path: Union[str, Path]) -> None:
    """Refuse weights that do not fit the model: other layers, or layers of another size."""
    expected = model.state_dict()
    found = {upgraded_key(key): value for key, value in checkpoint["state_dict"].items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, unknown to this model"
        raise CheckpointError(
            f"checkpoint {path} was made for a different model (it {what});"
            " pass a checkpoint of this LSTM classifier"
        )
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path} was made with a different model shape ({name} is"
                f" {tuple(found[name].shape)} there, {tuple(tensor.shape)} here); pass the checkpoint's own"
                " model settings, or a checkpoint trained with these"
            )


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints atomically and reads them only through `read_checkpoint`.

    Lightning's atomic save stages the file in the system's temporary folder, and moving it from another file
    system is a copy, not atomic; `staged` writes it beside its destination, synced, then renamed over it, so a
    kill at any moment leaves the previous checkpoint or the new one, never a torn file.
    """

    _handed_over: Optional[tuple[Path, dict[str, Any]]] = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Union[str, Path], storage_options: Optional[Any] = None) -> None:
        path = Path(path)
        # Serialized first: torch.save writing to a file that fills up raises a RuntimeError from its zip
        # writer (torch 2.14), not the OSError, and the size is what a full disk would need.
        data = io.BytesIO()
        torch.save(checkpoint, data)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A kill during an earlier write may have left its staging file behind; a run folder has one writer.
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
            with staged(path, resume_hint(path.parent), needed=data.tell()) as staging:
                staging.write_bytes(data.getbuffer())
        except OSError as err:
            raise OutputError(
                f"cannot write checkpoint {path} ({err.strerror or err}); the previous checkpoint is intact."
                " Free space or fix the folder's permissions, then resume with --ckpt_path last"
            ) from None

    def hand_over(self, path: Union[str, Path], checkpoint: dict[str, Any]) -> None:
        """The content of `path`, read and checked by the command already: the next load returns it instead of
        reading the file again. Once only: any later load reads the file as it is then."""
        self._handed_over = (Path(path), checkpoint)

    def load_checkpoint(
        self, path: Union[str, Path], map_location: Optional[Callable] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        handed_over, self._handed_over = self._handed_over, None
        if handed_over is not None and handed_over[0] == Path(path):
            return handed_over[1]  # read by read_checkpoint, on the CPU as here (the map_location above keeps it there)
        # weights_only is ignored on purpose: `--weights_only false` must not open the door to pickled code.
        return read_checkpoint(path, map_location=map_location)


class TimedCheckpoint(ModelCheckpoint):
    """A checkpoint after every `train_time_interval` of training, with one optimizer step per
    Lightning step or several (model.steps_per_execution > 1, manual optimization).

    Under manual optimization lightning 2.6.6's ModelCheckpoint ignores `train_time_interval` (only
    `every_n_train_steps` counts), so such a run saved only at validation and epoch ends; this keeps its own
    clock and saves through `trainer.save_checkpoint`. Being a ModelCheckpoint, it runs after every other
    callback (StopOnNonFinite checks a step before anything of it is saved) and gets its folder as the others
    do. tests/test_steps_per_execution.py checks that Lightning still skips it and that this saves mid-epoch.
    """

    def __init__(self, train_time_interval: timedelta, filename: str = "last", **kwargs: Any) -> None:
        super().__init__(filename=filename, train_time_interval=train_time_interval, **kwargs)
        self.interval = train_time_interval.total_seconds()
        self._since: Optional[float] = None
        self._saved_step: Optional[int] = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._since = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        due = self._since is not None and now - self._since >= self.interval and trainer.global_step != self._saved_step
        if trainer.sanity_checking or not trainer.strategy.broadcast(due):  # rank 0's clock decides
            return
        self._save(trainer, now)  # before a validation too: resume.OwedValidation runs it on resume

    def _save(self, trainer, now: float) -> None:
        self._since, self._saved_step = now, trainer.global_step
        trainer.save_checkpoint(Path(self.dirpath) / f"{self.filename}{self.FILE_EXTENSION}", self.save_weights_only)
        for logger in trainer.loggers:  # as ModelCheckpoint does: RunLogger flushes its events with each checkpoint
            logger.after_save_checkpoint(self)

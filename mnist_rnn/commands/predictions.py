"""What `mnist-rnn predict` writes: a CSV of predictions, one row per image."""

from __future__ import annotations

import contextlib
import csv
import errno
import itertools
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from mnist_rnn.data.normalization import NO_LABEL
from mnist_rnn.errors import ConfigError, PredictOutputError, SkippedInputsError, disk_full, is_disk_full
from mnist_rnn.run.folders import commit, staging_path


class PredictionCSVWriter(BasePredictionWriter):
    """Writes what predict found to a CSV, one row per image, and says where it is.

    Columns: path, prediction, confidence (the top probability), p0..p9, and label where the
    images have one (the official test set), in which case the printed summary gives the accuracy.
    """

    def __init__(self, output: Optional[str] = None) -> None:
        """
        Args:
            output: The CSV file to write (replaced if it exists). Default: a new file
                predictions/predictions_<N>.csv in the current folder, N the first number not
                taken, so that earlier predictions are never overwritten.
        """
        super().__init__(write_interval="batch")
        self.output = output
        self.path: Optional[Path] = None
        self._file = None
        self._staging: Optional[Path] = None
        self._claimed: Optional[Path] = None  # the default file name this run took
        self._csv = None
        self._rows = self._correct = 0
        self._labelled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict" or not trainer.is_global_zero:
            return
        if trainer.world_size > 1:
            raise ConfigError("predict writes a single CSV: run it on one device (--trainer.devices 1)")
        # Opened here, before predicting starts: a place that cannot be written fails at once. The rows go
        # to a hidden file next to it, which takes the CSV's name once whole.
        try:
            self.path = self._claim()
            self._staging = staging_path(self.path)
            self._file = self._staging.open("w", newline="")
        except OSError as err:
            self._discard()
            where = self.output or "predictions/"
            raise PredictOutputError(
                f"cannot write predictions to {where} ({err.strerror or err}); choose another file with"
                " --predictions.output"
            ) from None
        self._csv = None
        self._rows = self._correct = 0

    def _claim(self) -> Path:
        if self.output is not None:
            path = Path(self.output).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            return path
        folder = Path("predictions")
        folder.mkdir(exist_ok=True)
        for number in itertools.count():
            path = folder / f"predictions_{number}.csv"
            with contextlib.suppress(FileExistsError):
                path.open("x").close()  # "x": never replace an earlier file; the empty file holds the name
                self._claimed = path
                return path

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as err:
            if not is_disk_full(err):
                raise
            self._discard()
            raise disk_full(self.path, "nothing was written there; free space (or choose another file with"
                            " --predictions.output), then run the same command again") from None  # fmt: skip

    def _discard(self) -> None:
        """Remove what a failed predict wrote: the hidden file, and the empty one that held a new name."""
        with contextlib.suppress(OSError):
            self._close()
        for path in (self._staging, self._claimed):
            if path is not None:
                path.unlink(missing_ok=True)
        self._staging = self._claimed = None

    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
        batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        if self._file is None:
            return
        probs = prediction["probs"].float().cpu()
        labels = prediction["labels"].cpu()
        names = trainer.predict_dataloaders.dataset.names
        confidence, predicted = probs.max(dim=1)
        with self._writing():
            if self._csv is None:
                # The first batch tells whether these images carry labels: the test set does, the user's do not.
                self._labelled = bool((labels != NO_LABEL).all())
                self._csv = csv.writer(self._file)
                header = ["path", "prediction", "confidence", *(f"p{k}" for k in range(probs.shape[1]))]
                self._csv.writerow(header + (["label"] if self._labelled else []))
            for i, index in enumerate(batch_indices):
                row = [names[index], int(predicted[i]), f"{float(confidence[i]):.4f}"]
                row += [f"{p:.4f}" for p in probs[i].tolist()]
                if self._labelled:
                    row.append(int(labels[i]))
                    self._correct += int(predicted[i] == labels[i])
                self._csv.writerow(row)
        self._rows += len(batch_indices)

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()  # closed even when its last write fails

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is None:
            return
        with self._writing():
            self._close()
            commit(self._staging, self.path)
        self._staging = self._claimed = None
        print(f"predictions for {self._rows} images: {self.path}", flush=True)
        if self._labelled and self._rows:
            print(f"accuracy: {self._correct / self._rows:.4f} ({self._correct}/{self._rows})", flush=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._discard()


def report_skipped(datamodule) -> None:
    """Name every image predict could not read, then fail: a partial CSV must not pass for a whole one."""
    skipped = datamodule.skipped
    if not skipped:
        return
    for path, reason in skipped:
        print(f"mnist-rnn: skipped {path}: {reason}", file=sys.stderr)
    total = len(skipped) + len(datamodule.datasets["predict"])
    raise SkippedInputsError(
        f"{len(skipped)} of {total} inputs could not be read and have no prediction (named above);"
        " replace or remove them"
    )

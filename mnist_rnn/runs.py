"""Run folders: runs/<config>/version_<N>/, one per `fit`, never shared by two of them."""

from __future__ import annotations

import os
from typing import Any, Optional

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from mnist_rnn.errors import OutputError


class RunLogger(TensorBoardLogger):
    """TensorBoardLogger that claims its version folder atomically and flushes at every checkpoint.

    TensorBoardLogger picks the version after the highest one it sees on disk, so two runs
    started together both pick version_N and write their events, config and checkpoints into
    the same folder. Creating the folder with `os.mkdir`, which fails when it already exists,
    makes the pick and the claim one step: the second run moves on to version_N+1.
    """

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

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # What was logged up to a checkpoint reaches the disk with it (SummaryWriter otherwise keeps
        # up to two minutes in memory), so a run killed later and resumed from that checkpoint has
        # no gap in its curves. The checkpoint's own step logs its scalars just after the checkpoint
        # callbacks ran: those are flushed as soon as they come (log_metrics below).
        self.experiment.flush()
        self._flush_next = True

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        super().log_metrics(metrics, step)
        if getattr(self, "_flush_next", False):
            self._flush_next = False
            self.experiment.flush()


def _unwritable(folder: str, err: OSError) -> OutputError:
    return OutputError(
        f"cannot create the run folder {folder} ({err.strerror or err}); choose a writable"
        " --trainer.logger.init_args.save_dir or fix the folder's permissions"
    )

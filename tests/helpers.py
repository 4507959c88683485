"""Callbacks the tests plug into real CLI runs (importable from subprocesses via PYTHONPATH)."""

from pathlib import Path

import lightning as L
import torch


class RecordTrainingSamples(L.Callback):
    """Saves a fingerprint (pixel sum) of every training image each rank saw in epoch 0."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0:
            images, _ = batch
            self.seen.append(images.double().sum(dim=(1, 2)).cpu())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(torch.cat(self.seen), self.out_dir / f"rank{trainer.global_rank}.pt")

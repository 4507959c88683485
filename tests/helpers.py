"""Callbacks the tests plug into real CLI runs (importable from subprocesses via PYTHONPATH)."""

from pathlib import Path

import lightning as L
import torch


class RecordTrainingSamples(L.Callback):
    """Saves a fingerprint (pixel sum) of every training image each rank saw, per epoch, in order."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        images, _ = batch
        self.seen.setdefault(trainer.current_epoch, []).append(images.double().sum(dim=(1, 2)).cpu())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        seen = {epoch: torch.cat(parts) for epoch, parts in self.seen.items()}
        torch.save(seen, self.out_dir / f"rank{trainer.global_rank}.pt")


class RecordOneStep(L.Callback):
    """Saves the weights before and after training (rank 0) and each rank's first training batch."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_start(self, trainer, pl_module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if trainer.global_rank == 0:
            torch.save({k: v.clone() for k, v in pl_module.state_dict().items()}, self.folder / "start.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            torch.save([t.cpu() for t in batch], self.folder / f"batch_rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            torch.save(pl_module.state_dict(), self.folder / "end.pt")

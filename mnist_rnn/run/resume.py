"""Resuming a run exactly, in the order it happens: `resolve` finds `last` (the newest checkpoint of this config's
newest run: Lightning's own looks only in the new run's empty folder, then silently trains from scratch);
`check_resumable` refuses a weights-only checkpoint or one past the run's length; `continue_run` logs on in the
run's own folder when the checkpoint is its newest (purge_step hides what an interrupted attempt logged after it;
`catch_up_last` completes a save a kill cut short), else in a new one, leaving newer checkpoints alone;
`RandomState` keeps the generators (Lightning restores the rest, data.ResumableLoader the place in the epoch);
`OwedValidation` runs the validation a checkpoint was written before; `check_schedule_length` refuses a schedule
stretched to another length; after a stop, `resume_command` is the command to type.
"""

from __future__ import annotations

import random
import shlex
import shutil
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics import Metric

from mnist_rnn.errors import CheckpointError, ConfigError
from mnist_rnn.run.folders import newest_checkpoint, newest_in, runs_folder, staged, version_of

LAST = "last"


def saved_schedule(checkpoint: Path) -> dict[str, Any]:
    """The run length in the config.yaml saved beside a checkpoint's run, if there is one."""
    saved = checkpoint.resolve().parent.parent / "config.yaml"
    try:
        trainer = (yaml.safe_load(saved.read_text()) or {}).get("trainer") or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {k: trainer[k] for k in ("max_epochs", "max_steps") if k in trainer}


def mismatch_error(path: Path, found_by_last: bool, setting: str, saved: Any, given: Any) -> CheckpointError:
    """The one-line refusal of a checkpoint that another setting of this command contradicts."""
    if found_by_last:
        run = path.parent.parent
        return CheckpointError(
            f"--ckpt_path last found {run}, whose run has {setting} {saved!r} but this command sets {given!r};"
            f" continue that run with its own config (mnist-rnn fit -c {run / 'config.yaml'} --ckpt_path last)"
            " or start a new run without --ckpt_path"
        )
    return CheckpointError(
        f"checkpoint {path} was trained with {setting} {saved!r} but this command sets {given!r};"
        " leave that setting out (the checkpoint's is used) or pass a checkpoint trained with it"
    )


def resolve(ckpt_path: str, runs: Optional[Path]) -> Path:
    """`last` means the newest checkpoint of the newest run of this config; anything else is a file path."""
    if ckpt_path != LAST:
        return Path(ckpt_path)
    if runs is None:
        raise CheckpointError(
            "--ckpt_path last needs a logger with save_dir and name to find the runs; pass a checkpoint file instead"
        )
    found = newest_checkpoint(runs)
    if found is None:
        raise CheckpointError(
            f"--ckpt_path last: no checkpoint under {runs}/ to resume; start a new run without --ckpt_path,"
            " or pass the -c config the run was trained with"
        )
    return found


def run_of(checkpoint: Path, runs: Path) -> Optional[Path]:
    """The run folder (runs/<config>/version_<N>/) this checkpoint is the newest checkpoint of, if any: only that
    run continues in place, since continuing from an older checkpoint would overwrite the newer ones."""
    folder = checkpoint.resolve().parent
    run = folder.parent
    if folder.name != "checkpoints" or run.parent != runs.resolve() or version_of(run) is None:
        return None
    newest = newest_in(folder)
    return run if newest is not None and newest.resolve() == checkpoint.resolve() else None


def check_resumable(checkpoint: dict[str, Any], path: Path, max_epochs: Optional[int]) -> None:
    """Refuse, before anything runs, a checkpoint that `fit` could not continue from."""
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} holds weights only, so training cannot resume from it;"
            " use it with test, validate or predict, or pass a full checkpoint"
        )
    epoch = checkpoint.get("epoch", 0)
    if max_epochs is not None and max_epochs >= 0 and epoch > max_epochs:
        raise CheckpointError(
            f"checkpoint {path} is at epoch {epoch}, past --trainer.max_epochs {max_epochs};"
            " resume with the run's own max_epochs"
        )


def continue_run(config, checkpoint: dict[str, Any]) -> None:
    """Point fit's logger at the checkpoint's own run folder when it is that run's newest, and say so."""
    path = Path(config.ckpt_path)
    check_resumable(checkpoint, path, config.trainer.max_epochs)
    epoch, step = checkpoint.get("epoch", 0), checkpoint.get("global_step", 0)
    runs = runs_folder(config)
    run = run_of(path, runs) if runs is not None else None
    if run is not None:
        config.trainer.logger.init_args.version = version_of(run)
        config.trainer.logger.init_args.purge_step = step
        where = f"resuming {runs / run.name}"
    else:
        where = "resuming in a new run folder"
    print(f"{where} from {path} (epoch {epoch + 1}, after step {step})", flush=True)
    if run is not None:
        catch_up_last(path)


@rank_zero_only
def catch_up_last(newest: Path) -> None:
    """Bring the run's last.ckpt ("the newest state") up to its newest checkpoint, when that is another file.

    A validation's save writes the best checkpoint, then last.ckpt: a kill between the two leaves last.ckpt a
    validation behind. Mid-run the resumed run writes it again at its next save, but resumed after the run's last
    validation it has nothing left to train, so last.ckpt would stay behind for good (soak seed 614281). The two
    files of one save hold the same state (compared key for key), so the copy is the file the kill cut short.
    Written staged: a kill or a full disk leaves the old last.ckpt whole. A run without a last.ckpt gets none.
    """
    last = newest.with_name(ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)
    if newest.name == last.name or not last.is_file():
        return
    with staged(last, then="the old last.ckpt is left as it was; free space, then resume again") as staging:
        shutil.copyfile(newest, staging)
    print(f"last.ckpt brought up to {newest.name}, the run's newest checkpoint", flush=True)


def resume_command(args: list[str]) -> str:
    """The command that continues a stopped run: the same one, with `--ckpt_path last`."""
    kept: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--ckpt_path":
            next(rest, None)  # its value
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["mnist-rnn", *kept, "--ckpt_path", LAST])


def check_schedule_length(trainer: L.Trainer, scheduler: str, total: float) -> None:
    """Refuse a resumed schedule built for another length than total, the run's optimizer steps
    (RecurrentClassifier.optimizer_steps): onecycle would fail when it ran out of steps, cosine silently climb back."""
    total = int(total)
    for config in trainer.lr_scheduler_configs:
        built_for = getattr(config.scheduler, "total_steps", None) or getattr(config.scheduler, "T_max", None)
        if built_for is not None and built_for != total:
            raise ConfigError(
                f"the checkpoint's {scheduler} schedule was built for {built_for} steps but this run"
                f" has {total}; resume with the run's own --trainer.max_epochs / --trainer.max_steps"
            )


class RandomState(Callback):
    """Saves the random generators in every checkpoint and restores them on resume.

    Lightning restores weights, optimizer, schedule and loop progress but not the generators, so a resumed run
    would draw other dropout masks. Under DDP every rank's are saved and each rank gets its own back. NumPy's is
    left out: nothing in training draws from it (nor does the images' order: see `mnist_rnn.data.batches.EpochShuffle`).
    """

    def __init__(self) -> None:
        self._trainer: Optional[L.Trainer] = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _ranks(self) -> tuple[int, int]:
        trainer = self._trainer
        if trainer is None or trainer.world_size < 2 or not torch.distributed.is_initialized():
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        rank, world = self._ranks()
        if world == 1:
            return state
        # The metric sums a checkpoint keeps (train_acc of the epoch's part done) are each rank's own; its state_dict has rank 0's.
        module = self._trainer.lightning_module
        state["metrics"] = {
            name: {key: value.cpu() for key, value in metric.state_dict().items()}
            for name, metric in module.named_modules() if isinstance(metric, Metric) and metric.state_dict()
        }  # fmt: skip
        # Every rank writes a checkpoint's state (rank 0 then saves it): gather them all there.
        states: list[Any] = [None] * world
        torch.distributed.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank, world = self._ranks()
        ranks = state_dict.get("ranks")
        if ranks is not None:
            # Another number of processes than the run was saved with: rank 0's state is the best guess.
            state_dict = ranks[rank] if len(ranks) == world else ranks[0]
            if len(ranks) == world:
                module = self._trainer.lightning_module
                for name, metric in state_dict.get("metrics", {}).items():
                    module.get_submodule(name).load_state_dict({k: v.to(module.device) for k, v in metric.items()})
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class OwedValidation(Callback):
    """Runs, on resume, the validation that the checkpoint's training batch was followed by.

    Any ModelCheckpoint that saves at a training batch's end (`every_n_train_steps`, `train_time_interval`) can write
    its file just before a validation: at the epoch's last batch, or every `val_check_interval` batches. Resumed from
    it, lightning 2.6.6 skips that validation (its loop counters are fast-forwarded and, at an epoch's last batch, the
    epoch is marked done without its end), so the resumed run would miss a val/acc point, the best-checkpoint choice
    and the epoch's end, and draw its random numbers in another order than the run that was never interrupted.

    This callback records in each checkpoint whether a validation is owed (it sees every training batch end before
    any ModelCheckpoint, which Lightning always calls last), and on resume rewrites the checkpoint's loop progress to
    what it is once that batch is complete and the validation has started: Lightning's own "restarted mid-evaluation"
    state, from which it runs the validation, then the epoch's end, then trains on. The progress layout is
    lightning 2.6.6's (`fit_loop` state of `_BatchProgress` counters); tests/test_soak.py fails if it changes.
    """

    def __init__(self) -> None:
        self._owed = False
        self._resumed_owing = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._owed = validates_after(trainer, batch_idx)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._owed = False
        if self._resumed_owing:
            # The validation counted one batch as started on resume (the mark Lightning restarts from): uncount it,
            # so that the counters equal those of the run that was never interrupted.
            self._resumed_owing = False
            total = trainer.fit_loop.epoch_loop.val_loop.batch_progress.total
            total.ready = total.started = total.completed

    def state_dict(self) -> dict[str, Any]:
        return {"owed": self._owed}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key, {})
        fit_loop = checkpoint.get("loops", {}).get("fit_loop")
        self._resumed_owing = bool(state.get("owed")) and fit_loop is not None and owe_validation(fit_loop)


def owe_validation(fit_loop: dict[str, Any]) -> bool:
    """Rewrite a fit loop's saved progress from "training batch processed, not yet completed" (a save in
    on_train_batch_end) to "batch completed, validation started, none of its batches processed". False, and nothing
    changed, where the progress is not of that shape."""
    train = fit_loop.get("epoch_loop.batch_progress")
    val = fit_loop.get("epoch_loop.val_loop.batch_progress")
    if train is None or val is None:
        return False
    counts = [train["total"], train["current"]]
    if any(c["completed"] != c["processed"] - 1 for c in counts) or val["total"]["completed"] != val["total"]["ready"]:
        return False
    for c in counts:
        c["completed"] += 1
    done = val["total"]["completed"]
    val["total"].update(ready=done + 1, started=done + 1, processed=done)
    val["current"] = {"ready": 0, "started": 0, "processed": 0, "completed": 0}
    val["is_last_batch"] = False
    return True


def validates_after(trainer, batch_idx: int) -> bool:
    """Whether Lightning validates right after this training batch (lightning 2.6.6's rule for a
    validation every N batches or at the epoch's end; a time-based val_check_interval is not foreseen)."""
    every, per_epoch = trainer.val_check_batch, trainer.check_val_every_n_epoch
    if not trainer.enable_validation or (per_epoch is not None and (trainer.current_epoch + 1) % per_epoch):
        return False
    if trainer.should_stop or batch_idx + 1 >= trainer.num_training_batches:
        return True
    index = batch_idx if per_epoch is not None else trainer.fit_loop.epoch_loop.total_batch_idx
    return isinstance(every, int) and (index + 1) % every == 0

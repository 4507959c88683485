"""The Trainer's own settings and the seed, checked before anything is built.

Lightning refuses some of these only once the run has started, some in a stack trace (a zero
`accumulate_grad_batches` divides by zero), and some not at all (a negative `gradient_clip_val`
trains silently); here each is one line naming the setting and what it takes.
"""

from __future__ import annotations

from typing import Any, Callable

from mnist_rnn.errors import ConfigError

SEED_MAX = 2**32 - 1  # Lightning's seed_everything hands the seed to numpy, which takes 0..2**32-1


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _batches(value: Any, low: int) -> bool:
    """A fraction of the loader in [0, 1] (above 0 when low is 1) or a count of batches (Lightning reads 20.0 as 20)."""
    return _number(value) and value >= low * 1e-9 and (value <= 1 or float(value).is_integer())


def _count(value: Any) -> Any:
    """The number of batches a limit or an interval counts, None for a fraction of the loader."""
    return int(value) if _number(value) and (isinstance(value, int) or value > 1) and float(value).is_integer() else None


# Each setting's test (of its value, and whether the command is fit: only fit needs training
# batches) and the rule its error states, in the order they are checked.
RULES: dict[str, tuple[Callable[[Any, bool], bool], str]] = {
    "max_epochs": (lambda v, fit: v in (None, -1) or _whole(v, 1), "at least 1, or -1 for no limit"),
    "max_steps": (lambda v, fit: v == -1 or _whole(v, 1), "at least 1, or -1 for no limit"),
    "limit_train_batches": (lambda v, fit: v is None or _batches(v, int(fit)),
                            "a fraction in (0, 1] or a count of at least 1 (0 leaves nothing to train on)"),
    **{f"limit_{split}_batches": (lambda v, fit: v is None or _batches(v, 0), "a fraction in [0, 1] or a count of batches of at least 0")
       for split in ("val", "test", "predict")},
    "val_check_interval": (lambda v, fit: v is None or _batches(v, 1),
                           "a fraction of an epoch in (0, 1] or a count of at least 1 training batches"),
    "check_val_every_n_epoch": (lambda v, fit: v is None or _whole(v, 1),
                                "at least 1, or null to validate every --trainer.val_check_interval batches"),
    "accumulate_grad_batches": (lambda v, fit: _whole(v, 1), "at least 1"),
    "log_every_n_steps": (lambda v, fit: v is None or _whole(v, 0), "at least 1, or 0 for no step logs"),
    "gradient_clip_val": (lambda v, fit: v is None or _number(v) and v >= 0, "a number of at least 0, or null for no clipping"),
    "num_sanity_val_steps": (lambda v, fit: v is None or _whole(v, -1), "at least 0, or -1 for the whole validation set"),
    "num_nodes": (lambda v, fit: _whole(v, 1), "at least 1"),
}  # fmt: skip


def check_seed(seed: Any) -> None:
    if _number(seed) and not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"--seed_everything must lie in 0..{SEED_MAX}, got {seed}; or true for a random seed")


def check(trainer: Any, subcommand: str) -> None:
    """One line for the first setting out of range; `trainer` is the config's trainer namespace."""
    get = trainer.get
    fit = subcommand == "fit"
    for key, (ok, rule) in RULES.items():
        if not ok(get(key), fit):
            raise ConfigError(f"--trainer.{key} must be {rule}, got {get(key)}")
    interval, limit = _count(get("val_check_interval")), _count(get("limit_train_batches"))
    if fit and interval and limit and interval > limit and get("check_val_every_n_epoch") is not None:
        raise ConfigError(
            f"--trainer.val_check_interval {interval} is more than the {limit} training batches of an epoch"
            f" (--trainer.limit_train_batches); pass at most {limit}, or --trainer.check_val_every_n_epoch null"
            " to count batches across epochs"
        )
    callbacks = get("callbacks") or []
    names = [str(getattr(c, "class_path", c)) for c in (callbacks if isinstance(callbacks, list) else [callbacks])]
    if fit and get("logger") is False and any(name.endswith("LearningRateMonitor") for name in names):
        raise ConfigError(
            "--trainer.logger false leaves LearningRateMonitor (a callback of conf/default.yaml) nothing to log to;"
            " keep the logger, or give trainer.callbacks without it in your -c config"
        )

"""The Trainer's own settings and the seed, checked before anything is built.

Lightning refuses some of these only once the run has started, some in a stack trace (a zero
`accumulate_grad_batches` divides by zero), and some not at all (a negative `gradient_clip_val`
trains silently); here each is one line naming the setting and what it takes.
"""

from __future__ import annotations

from typing import Any

from mnist_rnn.errors import ConfigError

SEED_MAX = 2**32 - 1  # Lightning's seed_everything hands the seed to numpy, which takes 0..2**32-1


RULES = ("max_epochs", "max_steps", "limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
         "val_check_interval", "check_val_every_n_epoch", "accumulate_grad_batches", "log_every_n_steps", "gradient_clip_val",
         "num_sanity_val_steps", "num_nodes")  # fmt: skip


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


def check_seed(seed: Any) -> None:
    if _number(seed) and not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"--seed_everything must lie in 0..{SEED_MAX}, got {seed}; or true for a random seed")


def check(trainer: Any, subcommand: str) -> None:
    """One line for the first setting out of range; `trainer` is the config's trainer namespace."""
    get = trainer.get
    fit = subcommand == "fit"  # only fit needs training batches
    rules = {  # the keys are RULES
        "max_epochs": (get("max_epochs") in (None, -1) or _whole(get("max_epochs"), 1), "at least 1, or -1 for no limit"),
        "max_steps": (get("max_steps") == -1 or _whole(get("max_steps"), 1), "at least 1, or -1 for no limit"),
        "limit_train_batches": (get("limit_train_batches") is None or _batches(get("limit_train_batches"), int(fit)),
                                "a fraction in (0, 1] or a count of at least 1 (0 leaves nothing to train on)"),
        **{f"limit_{split}_batches": (get(f"limit_{split}_batches") is None or _batches(get(f"limit_{split}_batches"), 0),
                                      "a fraction in [0, 1] or a count of batches of at least 0")
           for split in ("val", "test", "predict")},
        "val_check_interval": (get("val_check_interval") is None or _batches(get("val_check_interval"), 1),
                               "a fraction of an epoch in (0, 1] or a count of at least 1 training batches"),
        "check_val_every_n_epoch": (get("check_val_every_n_epoch") is None or _whole(get("check_val_every_n_epoch"), 1),
                                    "at least 1, or null to validate every --trainer.val_check_interval batches"),
        "accumulate_grad_batches": (_whole(get("accumulate_grad_batches"), 1), "at least 1"),
        "log_every_n_steps": (get("log_every_n_steps") is None or _whole(get("log_every_n_steps"), 0), "at least 1, or 0 for no step logs"),
        "gradient_clip_val": (get("gradient_clip_val") is None or _number(get("gradient_clip_val")) and get("gradient_clip_val") >= 0,
                              "a number of at least 0, or null for no clipping"),
        "num_sanity_val_steps": (get("num_sanity_val_steps") is None or _whole(get("num_sanity_val_steps"), -1),
                                 "at least 0, or -1 for the whole validation set"),
        "num_nodes": (_whole(get("num_nodes"), 1), "at least 1"),
    }  # fmt: skip
    for key, (ok, rule) in rules.items():
        if not ok:
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

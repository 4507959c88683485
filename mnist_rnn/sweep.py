"""`mnist-rnn sweep`: one config over several seeds, or an Optuna search over its options.

    mnist-rnn sweep -c SWEEP.yaml [--resume] [--parallel N] [--storage URL]

The sweep file names a base config (any `fit` config, plus overrides) and either `seeds:` (a list,
or a count meaning 1..N) or `search:` (ranges and choices of any fit option, a number of trials,
the metric to optimise). Every trial is an ordinary `mnist-rnn fit` in a child process
(`python -m mnist_rnn.cli fit ...`), in its own run folder under runs/<sweep name>/, so the
trial's config.yaml reruns it and TensorBoard's HPARAMS tab compares all of them. Its best
checkpoint is then scored on the official test set, as `mnist-rnn test` does.

Why child processes: a trial is then exactly a `fit` from the shell (its threads, its seed, its
warnings filters, a DDP or GPU config launching its own processes as under `fit`, none of which
a long-lived process keeps clean), trials can run side by side (--parallel), and a trial that
crashes or is killed takes nothing else with it. The price is the start-up of each child (its
imports: `python -c "import mnist_rnn.cli"` took 6.7 s on the busy 2-core machine). The test of
a best checkpoint, a few seconds on one device, runs inside the sweep process instead, one at a
time.

The sweep's state is an Optuna study in SQLite (runs/<sweep>/sweep.db): seeds and search alike
are trials of it, so a sweep stopped by Ctrl-C, SIGTERM or a kill continues with --resume: finished
trials are kept, an interrupted one is retried (Optuna's RetryHeartbeatStaleTrialCallback) and
resumes from its run's last.ckpt. With --storage (any RDB URL Optuna takes), several machines
work on one study.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import difflib
import fcntl
import io
import json
import logging
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional, TextIO

import optuna
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback
from optuna_integration.pytorch_lightning.pytorch_lightning import _INTERMEDIATE_VALUE

from mnist_rnn import resume
from mnist_rnn.errors import ConfigError, MnistRnnError

ENV = "MNIST_RNN_SWEEP"  # set for a trial's `fit` child: what the sweep needs from it (see trial_callbacks)
# What the model logs during fit, and so what a sweep can optimise (test/* is logged only by test).
FIT_METRICS = ("val/acc_best", "val/acc", "val/loss", "train/acc", "train/loss")
TOP_KEYS = ("name", "base", "overrides", "seeds", "search")
SEARCH_KEYS = ("params", "n_trials", "metric", "direction", "sampler", "sampler_seed", "pruner")
PARAM_KEYS = ("type", "low", "high", "step", "log", "choices")
RESERVED = ("trainer.logger", "ckpt_path")  # set by the sweep for every trial
DIRECTIONS = {"maximize": "maximize", "max": "maximize", "minimize": "minimize", "min": "minimize"}
# A trial whose `fit` exits on a signal was stopped, not broken: the shell's 128 + SIGINT / SIGTERM.
STOPPED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL)
SQLITE_TIMEOUT_S = 60  # how long a writer waits for SQLite's lock before failing (trials write once per epoch)


class SweepError(ConfigError):
    """The sweep file, its base config or the sweep folder is not usable; raised before any trial starts."""


class TrialFailed(MnistRnnError):
    """A trial's `fit` or `test` failed; the message names its log."""


class SweepStopped(MnistRnnError):
    """The sweep was stopped by a signal; the interrupted trials resume with --resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention, as for a stopped fit


# ---------------------------------------------------------------------------------------------
# The sweep file


@dataclass
class Param:
    """One option of the search space and how to draw it."""

    name: str
    kind: str  # float, int or categorical
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: Optional[list] = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> tuple[Any, Any]:
        """The first and last values it can take, to check the fit parser accepts them."""
        if self.kind == "categorical":
            return self.choices[0], self.choices[-1]
        return self.low, self.high


@dataclass
class Spec:
    """A sweep file, read and checked."""

    path: Path
    name: str
    base: list[Path]
    overrides: dict
    seeds: Optional[list[int]] = None
    params: list[Param] = field(default_factory=list)
    n_trials: int = 0
    metric: str = "val/acc_best"
    direction: str = "maximize"
    sampler: str = "tpe"
    sampler_seed: Optional[int] = None
    pruner: Any = "median"

    @property
    def is_search(self) -> bool:
        return bool(self.params)

    def as_dict(self) -> dict:
        """What makes two runs of a sweep the same sweep (kept in the study, compared on --resume)."""
        return {
            # The base configs' text, not their paths: machines sharing a study install them in different places.
            "base": [p.read_text() for p in self.base],
            "overrides": self.overrides,
            "seeds": self.seeds,
            "params": [vars(p) for p in self.params],
            "n_trials": self.n_trials,
            "metric": self.metric,
            "direction": self.direction,
            "sampler": self.sampler,
            "sampler_seed": self.sampler_seed,
            "pruner": self.pruner,
        }

    def fit_args(self) -> list[str]:
        """The `fit` arguments every trial shares: the base configs, then the overrides."""
        args: list[str] = []
        for path in self.base:
            args += ["-c", str(path)]
        if self.overrides:
            # jsonargparse reads a -c value that is not a file as YAML text, with the same merging
            # rules as a file (so `callbacks+:` appends, as in a config).
            args += ["-c", yaml.safe_dump(self.overrides, default_flow_style=True, width=10**6).strip()]
        return args


def find_config(name: str, near: Optional[Path] = None) -> Optional[Path]:
    """A config as given (absolute, or relative to the working folder), next to `near`, or among
    the packaged configs (mnist_rnn/conf/, conf/ in a checkout), as `mnist-rnn fit -c` users expect."""
    from mnist_rnn.cli import config_file

    candidates = [Path(name)]
    if near is not None:
        candidates.append(near / name)
    candidates.append(Path(config_file(name)))
    return next((path for path in candidates if path.is_file()), None)


def _fail(where: str, message: str) -> NoReturn:
    raise SweepError(f"{where}: {message}")


def load_spec(given: str) -> Spec:
    path = find_config(given)
    if path is None:
        raise SweepError(f"sweep file {given} not found; pass a YAML file, e.g. -c conf/sweeps/seeds.yaml")
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        _fail(where, f"cannot be read as YAML ({' '.join(str(err).split())})")
    if not isinstance(raw, dict):
        _fail(where, "must be a YAML mapping with base/overrides and seeds or search")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        _fail(where, f"unknown key {unknown[0]!r}; the keys are {', '.join(TOP_KEYS)}")

    name = str(raw.get("name") or path.stem)
    if "/" in name or name in (".", ".."):
        _fail(where, f"name {name!r} must be a plain folder name (it becomes runs/<name>/)")

    base_names = raw.get("base") or []
    if isinstance(base_names, str):
        base_names = [base_names]
    base = []
    for base_name in base_names:
        found = find_config(str(base_name), near=path.parent)
        if found is None:
            _fail(where, f"base config {base_name} does not exist; name a fit config such as default.yaml or conf/tiny.yaml")
        base.append(found)

    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        _fail(where, "overrides must be a mapping of fit settings, written as in a fit config")

    spec = Spec(path=path, name=name, base=base, overrides=overrides)
    if raw.get("seeds") is not None:
        spec.seeds = _seeds(where, raw["seeds"])
    search = raw.get("search")
    if search is None:
        if spec.seeds is None:
            _fail(where, "give seeds: (a list, or a count) or search: (params and n_trials)")
        spec.n_trials = len(spec.seeds)
        return spec
    _read_search(where, search, spec)
    return spec


def _seeds(where: str, value: Any) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        _fail(where, f"seeds must be a list of integers or a count, got {value!r}")
    seeds = list(range(1, value + 1)) if isinstance(value, int) else value
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _fail(where, f"seeds must be a non-empty list of integers or a positive count, got {value!r}")
    if len(set(seeds)) != len(seeds):
        _fail(where, f"seeds repeat a value: {seeds}")
    return seeds


def _read_search(where: str, search: Any, spec: Spec) -> None:
    if not isinstance(search, dict):
        _fail(where, "search must be a mapping with params, n_trials, metric, direction")
    unknown = sorted(set(search) - set(SEARCH_KEYS))
    if unknown:
        _fail(where, f"unknown key search.{unknown[0]}; the keys are {', '.join(SEARCH_KEYS)}")
    n_trials = search.get("n_trials")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        _fail(where, f"search.n_trials must be a positive integer, got {n_trials!r}")
    spec.n_trials = n_trials
    spec.metric = str(search.get("metric", spec.metric))
    if spec.metric not in FIT_METRICS:
        _fail(
            where,
            f"search.metric {spec.metric} is not logged during fit; choose one of {', '.join(FIT_METRICS)}",
        )
    direction = str(search.get("direction", spec.direction))
    if direction not in DIRECTIONS:
        _fail(where, f"search.direction must be maximize or minimize, got {direction!r}")
    spec.direction = DIRECTIONS[direction]
    spec.sampler = str(search.get("sampler", spec.sampler))
    if spec.sampler not in ("tpe", "random"):
        _fail(where, f"search.sampler must be tpe or random, got {spec.sampler!r}")
    seed = search.get("sampler_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        _fail(where, f"search.sampler_seed must be an integer, got {seed!r}")
    spec.sampler_seed = seed
    spec.pruner = search.get("pruner", spec.pruner)
    _pruner(where, spec.pruner)  # checked now, built again for each process that needs it

    params = search.get("params")
    if not isinstance(params, dict) or not params:
        _fail(where, "search.params must map option names (like model.lr) to ranges or choices")
    for name, rule in params.items():
        spec.params.append(_param(where, str(name), rule))


def _param(where: str, name: str, rule: Any) -> Param:
    at = f"search.params.{name}"
    if not isinstance(rule, dict):
        _fail(where, f"{at} must be a mapping: {{low: .., high: .., log: true}} or {{choices: [..]}}")
    unknown = sorted(set(rule) - set(PARAM_KEYS))
    if unknown:
        _fail(where, f"unknown key {at}.{unknown[0]}; the keys are {', '.join(PARAM_KEYS)}")
    kind = rule.get("type") or ("categorical" if "choices" in rule else None)
    low, high = rule.get("low"), rule.get("high")
    if kind is None:
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
        kind = "int" if ints else "float"
    if kind not in ("float", "int", "categorical"):
        _fail(where, f"{at}.type must be float, int or categorical, got {kind!r}")
    if kind == "categorical":
        choices = rule.get("choices")
        if not isinstance(choices, list) or not choices:
            _fail(where, f"{at}.choices is empty; list at least one value")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            _fail(where, f"{at}.choices must be plain values (numbers, strings, true/false, null)")
        return Param(name, "categorical", choices=choices)
    for bound, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, f"{at}.{bound} must be a number, got {value!r}")
    if not low < high:
        _fail(where, f"{at} is an empty range (low {low} >= high {high}); make low smaller than high")
    param = Param(name, kind, low=low, high=high, step=rule.get("step"), log=bool(rule.get("log", False)))
    try:  # Optuna's own checks (log needs low > 0, a step must divide the range...), now rather than mid-sweep
        if kind == "int":
            optuna.distributions.IntDistribution(int(low), int(high), log=param.log, step=param.step or 1)
        else:
            optuna.distributions.FloatDistribution(float(low), float(high), log=param.log, step=param.step)
    except (ValueError, TypeError) as err:
        _fail(where, f"{at}: {' '.join(str(err).split())}")
    return param


def _pruner(where: str, setting: Any) -> optuna.pruners.BasePruner:
    """`median` (Optuna's MedianPruner: stop a trial whose metric is below the median of the trials
    before it at the same epoch), `none`, or {name: median, n_startup_trials: .., n_warmup_steps: ..}."""
    if setting in (None, "none", False):
        return optuna.pruners.NopPruner()
    kwargs = dict(setting) if isinstance(setting, dict) else {"name": setting}
    name = kwargs.pop("name", "median")
    if name != "median":
        _fail(where, f"search.pruner must be median or none, got {name!r}")
    # Two finished trials before any pruning, and never in the first epoch: one epoch of a
    # one-cycle schedule says little about the end.
    kwargs = {"n_startup_trials": 2, "n_warmup_steps": 1, **kwargs}
    try:
        return optuna.pruners.MedianPruner(**kwargs)
    except (TypeError, ValueError) as err:
        _fail(where, f"search.pruner: {' '.join(str(err).split())}")


# ---------------------------------------------------------------------------------------------
# Checking the options against the fit parser, before any trial


def parse_fit(args: list[str]) -> dict:
    """The complete `fit` config these arguments give (`fit --print_config`, in this process)."""
    from mnist_rnn.cli import cli_main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli_main(["fit", *args, "--print_config"])
    except SystemExit as exit:
        if exit.code not in (0, None):
            lines = [line for line in err.getvalue().splitlines() if line.strip()]
            message = lines[-1] if lines else f"exit status {exit.code}"
            message = re.sub(r" \(options: [^)]*\)$", "", message.removeprefix("mnist-rnn: error: "))
            raise ValueError(message) from None
    return yaml.safe_load(out.getvalue())


def _flat(config: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _flat(value, prefix + key + ".")
    return keys


def flag(name: str, value: Any) -> str:
    """--name=value as the fit parser reads it (JSON for anything but plain strings)."""
    return f"--{name}={value if isinstance(value, str) else json.dumps(value)}"


def check_spec(spec: Spec) -> dict:
    """Parse the base config with the overrides and each end of every range; return the base's fit config."""
    where = str(spec.path)
    try:
        config = parse_fit(spec.fit_args())
    except ValueError as err:
        _fail(where, f"the base config and overrides are not a valid fit config: {err}")
    known = _flat(config)
    for param in spec.params:
        if any(param.name == r or param.name.startswith(r + ".") for r in RESERVED):
            _fail(where, f"search.params.{param.name} is set by the sweep itself (run folders, checkpoints); remove it")
        if param.name == "seed_everything" and spec.seeds is not None:
            _fail(where, "search.params.seed_everything and seeds: both set the seed; keep one")
        if param.name not in known:
            close = difflib.get_close_matches(param.name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see mnist-rnn fit --print_config for the names"
            _fail(where, f"search.params.{param.name} is not a fit option{hint}")
    for end in (0, 1):
        values = [flag(p.name, p.extremes()[end]) for p in spec.params]
        if values:
            try:
                parse_fit(spec.fit_args() + values)
            except ValueError as err:
                _fail(where, f"the search space gives values the fit parser refuses: {err}")
    logger = config["trainer"].get("logger")
    init_args = logger.get("init_args") if isinstance(logger, dict) else None
    if not init_args or init_args.get("save_dir") is None:
        _fail(where, "the base config has no run logger (trainer.logger with save_dir); a sweep needs its run folders")
    return config


# ---------------------------------------------------------------------------------------------
# Inside a trial's `fit` (and its DDP processes): reporting back to the sweep


class SweepPruning(PyTorchLightningPruningCallback):
    """Optuna's Lightning pruning callback, for a trial that runs in a child process of the sweep.

    optuna-integration's callback (which imports `lightning.pytorch`, so it works with Lightning
    2.6) raises TrialPruned inside the training process when it is used in one process: here the
    sweep could only see that as a crash. Its distributed mode is the case of a trial owned by
    another process: it stops the trainer, records the decision in the study's storage, and the
    owner calls check_pruned(). The sweep uses that mode for every trial.
    """

    def __init__(self, storage: str, study_name: str, trial_id: int, monitor: str, pruner: Any) -> None:
        study = optuna.load_study(study_name=study_name, storage=_storage(storage), pruner=_pruner("sweep", pruner))
        super().__init__(optuna.trial.Trial(study, trial_id), monitor)

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        if not self.is_ddp_backend:
            self.is_ddp_backend = True
            self._trial.storage.set_trial_system_attr(self._trial._trial_id, _INTERMEDIATE_VALUE, {})


class SweepReport(Callback):
    """Writes what the sweep reads from a finished `fit`: its logged metrics, run folder and best checkpoint."""

    def __init__(self, report: str) -> None:
        self.report = Path(report)

    def on_fit_end(self, trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if ckpt is not None else ""
        if not best and ckpt is not None and ckpt.dirpath:
            best = str(resume.newest_in(Path(ckpt.dirpath)) or "")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        data = {"metrics": metrics, "run": log_dir, "best_checkpoint": best, "global_step": trainer.global_step}
        temporary = self.report.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=1))
        os.replace(temporary, self.report)


_held_locks: list[int] = []


def trial_callbacks() -> list[Callback]:
    """The callbacks `mnist-rnn fit` adds when the sweep started it (the MNIST_RNN_SWEEP variable).

    They are not in the run's config.yaml, so `mnist-rnn fit -c runs/.../config.yaml` reruns the
    trial as a plain fit. The process also ties its life to the sweep's: it gets SIGTERM (a
    checkpoint, then a stop) when the sweep dies, even by SIGKILL, and it holds a shared lock that
    a restarted sweep waits on, so that no trial of a killed sweep still writes when it resumes.
    """
    settings = json.loads(os.environ[ENV])
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        try:
            os.kill(settings["sweep_pid"], 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGTERM)  # the sweep died before prctl: stop as it would have
    lock = os.open(settings["lock"], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_SH)
    _held_locks.append(lock)  # held until the process ends
    callbacks: list[Callback] = [SweepReport(settings["report"])]
    if settings.get("trial_id") is not None:
        callbacks.append(
            SweepPruning(settings["storage"], settings["study"], settings["trial_id"], settings["metric"], settings["pruner"])
        )
    return callbacks


# ---------------------------------------------------------------------------------------------
# The sweep


def _storage(url: str, heartbeat: bool = False) -> RDBStorage:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    if heartbeat:
        # Several machines: a trial whose worker stops sending heartbeats (killed, preempted) is
        # marked failed after the grace period and queued again, by Optuna itself.
        kwargs.update(
            heartbeat_interval=60,
            grace_period=180,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True),
        )
    return RDBStorage(url, **kwargs)


def _percent(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _number(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


class Sweep:
    def __init__(self, spec: Spec, config: dict, resume: bool, parallel: int, storage_url: Optional[str], out: TextIO):
        self.spec = spec
        self.resume = resume
        self.parallel = parallel
        self.out = out
        logger_args = config["trainer"]["logger"]["init_args"]
        self.folder = Path(logger_args["save_dir"]) / spec.name  # as shown: relative to the working folder
        # Every file is opened by its absolute path, and every child starts in this folder:
        # jsonargparse changes the working folder while it reads a config file (the tests of
        # best checkpoints, in this process), so a relative path is not safe in other threads.
        self.home = Path.cwd()
        self.disk = self.home / self.folder
        self.remote = storage_url is not None
        self.storage_url = storage_url or f"sqlite:///{self.disk / 'sweep.db'}"
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # N trials at once share the cores: cores // N threads each, never more threads than cores.
        self.threads = max(1, cores // parallel) if parallel > 1 else None
        self.seed_sweep = not spec.is_search
        self.multi_seed = spec.is_search and spec.seeds is not None
        self.stopping: Optional[int] = None
        self.running: set[subprocess.Popen] = set()
        self.test_lock = threading.Lock()
        self.print_lock = threading.Lock()
        self.study: Optional[optuna.Study] = None
        # What stopped trials: Optuna marks the trial failed and re-raises, except for the last
        # trials of a parallel run, whose errors it drops; the sweep raises the first itself.
        self.errors: list[BaseException] = []
        self._sweep_lock: Optional[int] = None

    def say(self, text: str) -> None:
        with self.print_lock:
            print(text, file=self.out, flush=True)

    # -- the study ---------------------------------------------------------------------------

    def open(self) -> None:
        spec = self.spec
        exists = (self.disk / "sweep.db").is_file()
        if not self.remote and exists and not self.resume:
            raise SweepError(
                f"{self.folder}/ already holds the sweep {spec.name}; continue it with --resume, or give the"
                " sweep file another name: (nothing there is overwritten)"
            )
        if not self.remote and not exists and self.resume:
            raise SweepError(f"--resume: no sweep to continue in {self.folder}/; start it without --resume")
        self.disk.mkdir(parents=True, exist_ok=True)
        if not self.remote:
            self._lock()  # (a shared study needs no lock: Optuna hands out the trials)
        sampler: optuna.samplers.BaseSampler
        if spec.sampler == "random":
            sampler = optuna.samplers.RandomSampler(seed=spec.sampler_seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed)
        pruner = _pruner(str(spec.path), spec.pruner) if spec.is_search else optuna.pruners.NopPruner()
        storage = _storage(self.storage_url, heartbeat=self.remote)
        if spec.name in optuna.get_all_study_names(storage):
            self.study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
            stored = self.study.user_attrs.get("spec")
            if stored != json.loads(json.dumps(spec.as_dict())):
                changed = [k for k in spec.as_dict() if (stored or {}).get(k) != json.loads(json.dumps(spec.as_dict()[k]))]
                raise SweepError(
                    f"{spec.path} differs from the sweep stored in {self.storage_url} ({', '.join(changed)} changed);"
                    " give the changed sweep another name:"
                )
        else:
            self.study = optuna.create_study(
                study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner, direction=spec.direction,
                load_if_exists=self.remote,  # another machine may create it at the same moment
            )
            self.study.set_user_attr("spec", spec.as_dict())
        self._requeue()

    def close(self) -> None:
        """Let go of the sweep folder (the lock goes with the process anyway; this is for callers that go on)."""
        if self._sweep_lock is not None:
            os.close(self._sweep_lock)
            self._sweep_lock = None

    def _lock(self) -> None:
        """One sweep process per sweep folder; then wait until every trial of an earlier, killed one has stopped."""
        self._sweep_lock = os.open(self.disk / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._sweep_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(
                f"another mnist-rnn sweep is running on {self.folder}/; wait for it, or stop it (Ctrl-C) and --resume"
            ) from None
        trials_lock = os.open(self.disk / ".trials.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(trials_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.say("waiting for the trials of the stopped sweep to save their checkpoints and exit...")
            fcntl.flock(trials_lock, fcntl.LOCK_EX)
        os.close(trials_lock)

    def _requeue(self) -> None:
        """Queue again what an earlier run of this sweep left unfinished."""
        study = self.study
        trials = study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
        retry = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
        for trial in trials:
            if trial.number in retried:
                continue
            # Locally the sweep lock proves a running trial's sweep is gone; on a shared storage,
            # Optuna's heartbeat finds the dead ones.
            killed = trial.state == TrialState.RUNNING and not self.remote
            stopped = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and self.resume
            if killed:
                study.tell(trial.number, state=TrialState.FAIL)
            if killed or stopped:
                retry(study, study.get_trials(deepcopy=False)[trial.number])
        if self.seed_sweep:
            # Every seed that is neither done nor queued (a first start, or a seed whose trial failed).
            taken = {
                t.params.get("seed")
                for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
            }
            for seed in self.spec.seeds:
                if seed not in taken:
                    study.enqueue_trial({"seed": seed})

    def done(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    # -- running ----------------------------------------------------------------------------

    def run(self) -> int:
        spec = self.spec
        remaining = spec.n_trials - self.done()
        kind = f"{len(spec.seeds)} seeds" if self.seed_sweep else f"{spec.n_trials} trial(s), {spec.metric} {spec.direction[:3]}"
        at_once = f"{self.parallel} at a time, {self.threads} thread(s) each" if self.parallel > 1 else "one at a time"
        self.say(
            f"sweep {spec.name}: {kind}; {spec.n_trials - remaining} done, {max(remaining, 0)} to run, {at_once};"
            f" runs in {self.folder}/ (tensorboard --logdir {self.folder})"
        )
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        if threading.current_thread() is threading.main_thread():
            for signum in previous:
                signal.signal(signum, self._on_signal)
        try:
            if remaining > 0:
                callbacks = [optuna.study.MaxTrialsCallback(spec.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))]
                self.study.optimize(
                    self._objective, n_trials=remaining, n_jobs=self.parallel, catch=(), callbacks=callbacks
                )
            if self.errors:
                raise self.errors[0]
        except SweepStopped:
            self.summarize(final=False)
            raise
        finally:
            if threading.current_thread() is threading.main_thread():
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        return self.summarize(final=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Ctrl-C reaches the trials too (one process group): they save a checkpoint and stop. A
        # SIGTERM (kill, a scheduler) reaches the sweep only: pass it on.
        self.stopping = signum
        if signum == signal.SIGTERM:
            for process in list(self.running):
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        self.say(f"stopping ({signal.Signals(signum).name}): running trials save a checkpoint; no new trial starts")

    def _objective(self, trial: optuna.Trial) -> float:
        try:
            return self._trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            self.errors.append(err)
            raise

    def _trial(self, trial: optuna.Trial) -> float:
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        origin = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        params = {p.name: p.suggest(trial) for p in self.spec.params}
        if self.seed_sweep:
            seeds: list[Optional[int]] = [trial.suggest_categorical("seed", self.spec.seeds)]
        else:
            seeds = list(self.spec.seeds) if self.multi_seed else [None]
        if self.stopping is not None:  # drawn already, so that a resumed sweep runs these settings
            trial.set_user_attr("interrupted", True)
            raise SweepStopped("stopped before the trial started", self.stopping)
        trial.set_user_attr("interrupted", False)
        number = trial.number if origin is None else origin  # a retried trial goes on in its first run folder
        shown = "  ".join(f"{k}={_number(v)}" for k, v in params.items())
        again = f" (trial {origin} again, resumed)" if origin is not None else ""
        self.say(f"trial {trial.number}{again}: {shown or f'seed {seeds[0]}'}")
        results = []
        for index, seed in enumerate(seeds):
            if self.seed_sweep:
                run_name = f"seed_{seed}"
            else:
                run_name = f"trial_{number:03d}" + (f"_seed_{seed}" if self.multi_seed else "")
            prune = self.spec.is_search and index == 0  # with several seeds, the first one decides
            result = self._run(trial, run_name, params, seed, prune)
            results.append(result)
            trial.set_user_attr("runs", results)
            if result.get("pruned"):
                score = _cell(self.spec.metric, result["value"])
                self.say(f"trial {trial.number}: pruned after epoch {result['epochs']} ({self.spec.metric} {score})")
                raise optuna.TrialPruned()
        value = statistics.fmean(r["value"] for r in results)
        tests = [r["test/acc"] for r in results]
        self.say(
            f"trial {trial.number}: {self.spec.metric} {_cell(self.spec.metric, value)}  test/acc {_percent(statistics.fmean(tests))}"
            f"  ({sum(r['wall_s'] for r in results):.0f} s)  {results[0]['run']}"
        )
        return value

    def _run(self, trial: optuna.Trial, run_name: str, params: dict, seed: Optional[int], prune: bool) -> dict:
        """One run of a trial: its fit (see _fit), then the test of its best checkpoint."""
        run_root = self.disk / run_name
        run_root.mkdir(parents=True, exist_ok=True)
        report = run_root / "result.json"
        fit = json.loads(report.read_text()) if report.is_file() else None
        if fit is not None and "test/acc" in fit:
            return fit  # this run of a retried trial had finished before the stop
        fit_s = 0.0
        if fit is None:  # else its fit had finished: only the test is left
            fit_s = self._fit(trial, run_root, report, params, seed, prune)
            fit = json.loads(report.read_text())
        if self.spec.metric not in fit["metrics"]:
            raise TrialFailed(
                f"trial {trial.number} did not log {self.spec.metric} (it logged {', '.join(sorted(fit['metrics']))});"
                " choose one of those as search.metric"
            )
        result = {
            "seed": seed,
            "run": fit["run"],
            "best_checkpoint": fit["best_checkpoint"],
            "value": fit["metrics"][self.spec.metric],
            "val/acc_best": fit["metrics"].get("val/acc_best"),
        }
        if prune:
            try:
                PyTorchLightningPruningCallback(trial, self.spec.metric).check_pruned()
            except optuna.TrialPruned:
                # A hopeless trial's checkpoint is not worth the test set's time.
                return {**result, "pruned": True, "wall_s": fit_s, "epochs": len(_intermediate(self.study, trial))}
        started = time.perf_counter()
        result["test/acc"] = self._test(run_root, fit)
        result["wall_s"] = fit_s + time.perf_counter() - started
        result["test_command"] = testing_command(fit)
        report.write_text(json.dumps({**fit, **result}, indent=1))
        return result

    def _fit(self, trial: optuna.Trial, run_root: Path, report: Path, params: dict, seed: Optional[int], prune: bool) -> float:
        """The trial's `fit` in a child process, resumed from its last.ckpt if an earlier attempt left one."""
        args = [*self.spec.fit_args(), *(flag(k, v) for k, v in params.items())]
        if seed is not None:
            args.append(flag("seed_everything", seed))
        if self.threads is not None:
            args.append(flag("threads", self.threads))
        args += [flag("trainer.logger.init_args.save_dir", str(self.folder)), flag("trainer.logger.init_args.name", run_root.name)]
        if resume.newest_checkpoint(run_root) is not None:  # (fit resolves `last` the same way)
            args += ["--ckpt_path", resume.LAST]
        settings = {
            "report": str(report),
            "lock": str(self.disk / ".trials.lock"),
            "sweep_pid": os.getpid(),
        }
        if prune:
            settings.update(
                storage=self.storage_url, study=self.spec.name, trial_id=trial._trial_id,  # the id storages use
                metric=self.spec.metric, pruner=self.spec.pruner,
            )
        env = dict(os.environ, **{ENV: json.dumps(settings)})
        # The children import this same copy of mnist_rnn, installed or not.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        log = run_root / "fit.log"
        command = [sys.executable, "-m", "mnist_rnn.cli", "fit", *args]
        started = time.perf_counter()
        with open(log, "a") as log_file:
            log_file.write(f"$ {shlex.join(command)}\n")
            log_file.flush()
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=self.home)
            self.running.add(process)
            try:
                code = process.wait()
            finally:
                self.running.discard(process)
        if code in STOPPED_CODES or (code != 0 and self.stopping is not None):
            trial.set_user_attr("interrupted", True)
            raise SweepStopped(f"trial {trial.number} stopped", self.stopping or signal.SIGTERM)
        if code != 0:
            shown = self.folder / run_root.name / log.name
            raise TrialFailed(f"trial {trial.number} failed: fit exited with status {code}: {_last_error(log)} (log: {shown})")
        return time.perf_counter() - started

    def _test(self, run_root: Path, fit: dict) -> float:
        """`mnist-rnn test -c <run>/config.yaml --ckpt_path <best>`, here, on one device (the exact score)."""
        from mnist_rnn.cli import cli_main

        if not fit["best_checkpoint"]:
            raise TrialFailed(f"the run {fit['run']} saved no checkpoint to test; keep a ModelCheckpoint in the config")
        args = ["test", "-c", str(self.home / fit["run"] / "config.yaml"), "--ckpt_path", str(self.home / fit["best_checkpoint"])]
        args += ["--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto"]
        log = run_root / "test.log"
        with self.test_lock, open(log, "a") as log_file:
            try:
                # Lightning's info lines go through logging handlers bound to the terminal: not wanted there.
                logging.disable(logging.INFO)
                with contextlib.redirect_stdout(log_file), contextlib.redirect_stderr(log_file):
                    cli = cli_main(args)
            except (MnistRnnError, SystemExit) as err:
                shown = self.folder / run_root.name / log.name
                raise TrialFailed(f"testing {fit['best_checkpoint']} failed: {err} (log: {shown})") from None
            finally:
                logging.disable(logging.NOTSET)
            return float(cli.trainer.callback_metrics["test/acc"])

    # -- results ----------------------------------------------------------------------------

    def rows(self) -> list[dict]:
        rows = []
        trials = self.study.get_trials(deepcopy=False)
        retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
        for trial in trials:
            if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
                continue
            if trial.state == TrialState.FAIL and (trial.user_attrs.get("interrupted") or trial.number in retried):
                continue  # stopped, not broken: its retry carries it on
            for run in trial.user_attrs.get("runs") or [{}]:
                row = {"trial": trial.number, "state": trial.state.name.lower()}
                if self.spec.seeds is not None:
                    row["seed"] = run.get("seed")
                row.update({p.name: trial.params.get(p.name) for p in self.spec.params})
                if self.spec.metric != "val/acc_best":
                    row[self.spec.metric] = run.get("value")
                row.update({
                    "val/acc_best": run.get("val/acc_best"),
                    "test/acc": run.get("test/acc"),
                    "wall_s": round(run["wall_s"], 1) if run.get("wall_s") is not None else None,
                    "run": run.get("run"),
                    "best_checkpoint": run.get("best_checkpoint"),
                })
                rows.append(row)
        if self.seed_sweep:
            rows.sort(key=lambda row: row["seed"] if row["seed"] is not None else math.inf)
        return rows

    def summarize(self, final: bool) -> int:
        rows = self.rows()
        csv_path = self.folder / "results.csv"
        if rows:
            temporary = self.disk / "results.tmp"
            with open(temporary, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            os.replace(temporary, self.disk / csv_path.name)
        shown = [k for k in (rows[0] if rows else {}) if k not in ("run", "best_checkpoint")]
        if rows:
            widths = {k: max(len(k), *(len(_cell(k, r[k])) for r in rows)) for k in shown}
            self.say("")
            self.say("  ".join(k.rjust(widths[k]) for k in shown))
            for row in rows:
                self.say("  ".join(_cell(k, row[k]).rjust(widths[k]) for k in shown))
        summary: dict[str, Any] = {"sweep": self.spec.name, "csv": str(csv_path), "trials_done": self.done()}
        best = self._best()
        if best is not None:
            trial, runs = best
            tests = [r["test/acc"] for r in runs if r.get("test/acc") is not None]
            stats = spread(tests)
            summary.update(best_trial=trial.number, best_params=trial.params, best_value=trial.value, **stats)
            what = f"{len(tests)} seeds" if self.seed_sweep else f"the best trial ({trial.number})"
            if self.multi_seed:
                what = f"the {len(tests)} seeds of {what}"
            if len(tests) > 1:
                line = (
                    f"test/acc over {what}: {_percent(stats['test_acc_mean'])} ± {_percent(stats['test_acc_std'])}"
                    f" (mean ± sample std), min {_percent(stats['test_acc_min'])}, max {_percent(stats['test_acc_max'])}"
                )
            else:
                line = f"test/acc of {what}: {_percent(stats['test_acc_mean'])} (one run: add seeds: for mean ± std)"
            self.say("")
            self.say(line)
            if not self.seed_sweep:
                settings = "  ".join(f"{k}={_number(v)}" for k, v in trial.params.items())
                self.say(f"best trial: {trial.number}, {self.spec.metric} {_cell(self.spec.metric, trial.value)}: {settings}")
            best_of = max if self.spec.direction == "maximize" else min
            top = best_of(runs, key=lambda run: run["value"])
            summary.update(best_checkpoint=top["best_checkpoint"], test_command=top["test_command"])
            self.say(f"best checkpoint: {top['best_checkpoint']}")
            self.say(f"test it: {top['test_command']}")
        if rows:
            self.say(f"results: {csv_path}  (tensorboard --logdir {self.folder}: HPARAMS compares the trials)")
        (self.disk / "summary.json").write_text(json.dumps(summary, indent=1))
        if final:
            left = self.spec.n_trials - self.done()
            if left > 0 and not self.remote:
                self.say(f"{left} trial(s) not run; continue with: {resume_command(self.spec)}")
        return 0

    def _best(self) -> Optional[tuple[optuna.trial.FrozenTrial, list[dict]]]:
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return None
        if self.seed_sweep:
            # All seeds are one setting: the statistics cover every run, the best run is the best seed's.
            runs = [r for t in complete for r in t.user_attrs.get("runs", [])]
            best = self.study.best_trial
            return best, runs
        best = self.study.best_trial
        return best, best.user_attrs.get("runs", [])


def _intermediate(study: optuna.Study, trial: optuna.Trial) -> dict:
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    return frozen.intermediate_values


def spread(values: list[float]) -> dict:
    return {
        "test_acc_mean": statistics.fmean(values) if values else None,
        "test_acc_std": statistics.stdev(values) if len(values) > 1 else None,
        "test_acc_min": min(values) if values else None,
        "test_acc_max": max(values) if values else None,
        "test_acc_n": len(values),
    }


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key in ("val/acc_best", "test/acc", "val/acc", "train/acc"):
        return _percent(value)
    return _number(value)


def testing_command(fit: dict) -> str:
    return shlex.join(["mnist-rnn", "test", "-c", str(Path(fit["run"]) / "config.yaml"), "--ckpt_path", fit["best_checkpoint"]])


def resume_command(spec: Spec, extra: tuple[str, ...] = ()) -> str:
    return shlex.join(["mnist-rnn", "sweep", "-c", str(spec.path), *extra, "--resume"])


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mnist-rnn:") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1]


# ---------------------------------------------------------------------------------------------
# The command


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"mnist-rnn: error: {message} (options: mnist-rnn sweep --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="mnist-rnn sweep",
        description="Run one fit config over several seeds, or an Optuna search over its options (docs/sweep.md).",
    )
    parser.add_argument("-c", "--config", required=True, help="the sweep file, e.g. conf/sweeps/seeds.yaml")
    parser.add_argument("--resume", action="store_true", help="continue the sweep stored in runs/<name>/ after a stop or a kill")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="trials run at once, each with cores // N threads")
    parser.add_argument(
        "--storage", metavar="URL", default=None,
        help="an Optuna RDB URL (postgresql://..., mysql://...) shared by several machines; default: SQLite in runs/<name>/",
    )
    return parser


def sweep_main(argv: list[str]) -> int:
    options = _parser().parse_args(argv)
    if options.parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {options.parallel}")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=r".*step .* is already reported.*")  # check_pruned reports again
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own line per trial, and errors in one line
    spec = load_spec(options.config)
    config = check_spec(spec)
    sweep = Sweep(spec, config, options.resume, options.parallel, options.storage, sys.stdout)
    try:
        sweep.open()
        return sweep.run()
    except SweepStopped as stop:
        extra = ("--parallel", str(options.parallel)) if options.parallel > 1 else ()
        if options.storage:
            extra += ("--storage", options.storage)
        print(f"mnist-rnn: sweep {spec.name} stopped; resume with: {resume_command(spec, extra)}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    finally:
        sweep.close()

"""The sweep file of `mnist-rnn sweep`: read it, and check it against the `fit` parser before any trial.

A sweep file names base configs (any `fit` config, plus overrides) and either `seeds:` (a list, or a
count meaning 1..N) or `search:` (ranges and choices of any fit option, a number of trials, the
metric to optimise). Each range becomes an Optuna distribution, so Optuna's own checks apply.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Optional

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from mnist_rnn.errors import ConfigError

# What the model logs during fit, and so what a sweep can optimise (test/* is logged only by test).
FIT_METRICS = ("val/acc_best", "val/acc", "val/loss", "train/acc", "train/loss")
TOP_KEYS = ("name", "base", "overrides", "seeds", "search")
SEARCH_KEYS = ("params", "n_trials", "metric", "direction", "sampler", "sampler_seed", "pruner")
PARAM_KEYS = ("type", "low", "high", "step", "log", "choices")
RESERVED = ("trainer.logger", "ckpt_path")  # set by the sweep for every trial
DIRECTIONS = {"maximize": "maximize", "max": "maximize", "minimize": "minimize", "min": "minimize"}


class SweepError(ConfigError):
    """The sweep file, its base config or the sweep folder is not usable; raised before any trial starts."""


@dataclass
class Spec:
    """A sweep file, read and checked."""

    path: Path
    name: str
    base: list[Path]
    overrides: dict
    seeds: Optional[list[int]] = None
    params: dict[str, BaseDistribution] = field(default_factory=dict)
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
        settings = {k: getattr(self, k) for k in ("overrides", "seeds", "n_trials", "metric", "direction", "sampler", "sampler_seed", "pruner")}
        # The base configs' text, not their paths: machines sharing a study install them in different places.
        settings.update(base=[p.read_text() for p in self.base],
                        params={k: optuna.distributions.distribution_to_json(d) for k, d in self.params.items()})
        return json.loads(json.dumps(settings))  # as the study's storage gives it back

    def fit_args(self) -> list[str]:
        """The `fit` arguments every trial shares: the base configs, then the overrides."""
        args = [arg for path in self.base for arg in ("-c", str(path))]
        if self.overrides:
            # jsonargparse reads a -c value that is not a file as YAML text, merged as a file is
            # (so `callbacks+:` appends, as in a config).
            args += ["-c", yaml.safe_dump(self.overrides, default_flow_style=True, width=10**6).strip()]
        return args


def _fail(where: str, message: str) -> NoReturn:
    raise SweepError(f"{where}: {message}")


def find_config(name: str, near: Optional[Path] = None) -> Optional[Path]:
    """A config as given, next to `near`, or among the packaged configs, as `mnist-rnn fit -c` finds them."""
    from mnist_rnn.cli import config_file  # cli.py imports this module only inside main(): no circle

    candidates = [Path(name), *([near / name] if near else []), Path(config_file(name))]
    return next((path for path in candidates if path.is_file()), None)


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
    _known(where, raw, TOP_KEYS, "")
    name = str(raw.get("name") or path.stem)
    if "/" in name or name in (".", ".."):
        _fail(where, f"name {name!r} must be a plain folder name (it becomes runs/<name>/)")
    base = []
    for base_name in [raw["base"]] if isinstance(raw.get("base"), str) else raw.get("base") or []:
        found = find_config(str(base_name), near=path.parent)
        if found is None:
            _fail(where, f"base config {base_name} does not exist; name a fit config such as default.yaml or conf/tiny.yaml")
        base.append(found)
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        _fail(where, "overrides must be a mapping of fit settings, written as in a fit config")
    spec = Spec(path=path, name=name, base=base, overrides=overrides)
    if raw.get("seeds") is not None and raw.get("search") is not None:
        _fail(where, "give seeds: or search:, not both; search first, then run the best settings as a seed sweep")
    if raw.get("seeds") is not None:
        spec.seeds = _seeds(where, raw["seeds"])
        spec.n_trials = len(spec.seeds)
    elif raw.get("search") is not None:
        _read_search(where, raw["search"], spec)
    else:
        _fail(where, "give seeds: (a list, or a count) or search: (params and n_trials)")
    return spec


def _known(where: str, mapping: dict, keys: tuple, at: str) -> None:
    unknown = sorted(set(mapping) - set(keys))
    if unknown:
        _fail(where, f"unknown key {at}{unknown[0]}; the keys are {', '.join(keys)}")


def _seeds(where: str, value: Any) -> list[int]:
    seeds = list(range(1, value + 1)) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _fail(where, f"seeds must be a non-empty list of integers or a positive count, got {value!r}")
    if len(set(seeds)) != len(seeds):
        _fail(where, f"seeds repeat a value: {seeds}")
    return seeds


def _read_search(where: str, search: Any, spec: Spec) -> None:
    if not isinstance(search, dict):
        _fail(where, "search must be a mapping with params, n_trials, metric, direction")
    _known(where, search, SEARCH_KEYS, "search.")
    n_trials = search.get("n_trials")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        _fail(where, f"search.n_trials must be a positive integer, got {n_trials!r}")
    spec.n_trials = n_trials
    spec.metric = str(search.get("metric", spec.metric))
    if spec.metric not in FIT_METRICS:
        _fail(where, f"search.metric {spec.metric} is not logged during fit; choose one of {', '.join(FIT_METRICS)}")
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
    make_pruner(spec, where)  # checked now; each worker builds its own
    params = search.get("params")
    if not isinstance(params, dict) or not params:
        _fail(where, "search.params must map option names (like model.lr) to ranges or choices")
    spec.params = {str(name): _distribution(where, f"search.params.{name}", rule) for name, rule in params.items()}


def _distribution(where: str, at: str, rule: Any) -> BaseDistribution:
    if not isinstance(rule, dict):
        _fail(where, f"{at} must be a mapping: {{low: .., high: .., log: true}} or {{choices: [..]}}")
    _known(where, rule, PARAM_KEYS, f"{at}.")
    low, high = rule.get("low"), rule.get("high")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
    kind = rule.get("type") or ("categorical" if "choices" in rule else "int" if ints else "float")
    if kind == "categorical":
        choices = rule.get("choices")
        if not isinstance(choices, list) or not choices:
            _fail(where, f"{at}.choices is empty; list at least one value")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            _fail(where, f"{at}.choices must be plain values (numbers, strings, true/false, null)")
        return CategoricalDistribution(choices)
    if kind not in ("float", "int"):
        _fail(where, f"{at}.type must be float, int or categorical, got {kind!r}")
    for bound, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, f"{at}.{bound} must be a number, got {value!r}")
    if not low < high:  # Optuna takes low == high (one value); a sweep over one value is a mistake
        _fail(where, f"{at} is an empty range (low {low} >= high {high}); make low smaller than high")
    log, step = bool(rule.get("log", False)), rule.get("step")
    try:  # Optuna's own checks (log needs low > 0, a step must divide the range...), now rather than mid-sweep
        if kind == "int":
            return IntDistribution(int(low), int(high), log=log, step=step or 1)
        return FloatDistribution(float(low), float(high), log=log, step=step)
    except (ValueError, TypeError) as err:
        _fail(where, f"{at}: {' '.join(str(err).split())}")


def make_pruner(spec: Spec, where: str = "sweep") -> optuna.pruners.BasePruner:
    """`median` (Optuna's MedianPruner: stop a trial whose metric is below the median of the trials
    before it at the same epoch), `none`, or {name: median, n_startup_trials: .., n_warmup_steps: ..}."""
    setting = spec.pruner
    if spec.seeds is not None or setting in (None, "none", False):  # a seed sweep prunes nothing
        return optuna.pruners.NopPruner()
    kwargs = dict(setting) if isinstance(setting, dict) else {"name": setting}
    if kwargs.pop("name", "median") != "median":
        _fail(where, f"search.pruner must be median or none, got {setting!r}")
    # Two finished trials before any pruning, and never in the first epoch: one epoch of a
    # one-cycle schedule says little about the end.
    try:
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 2, "n_warmup_steps": 1, **kwargs})
    except (TypeError, ValueError) as err:
        _fail(where, f"search.pruner: {' '.join(str(err).split())}")


def flag(name: str, value: Any) -> str:
    """--name=value as the fit parser reads it (JSON for anything but plain strings)."""
    return f"--{name}={value if isinstance(value, str) else json.dumps(value)}"


def parse_fit(args: list[str]) -> dict:
    """The complete `fit` config these arguments give: LightningCLI's own `--print_config`, in this process."""
    from mnist_rnn.cli import cli_main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli_main(["fit", *args, "--print_config"])
    except SystemExit as exit:
        if exit.code not in (0, None):
            lines = [line for line in err.getvalue().splitlines() if line.strip()] or [f"exit status {exit.code}"]
            raise ValueError(re.sub(r" \(options: [^)]*\)$", "", lines[-1].removeprefix("mnist-rnn: error: "))) from None
    return yaml.safe_load(out.getvalue())


def _flat(config: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys += [prefix + key, *(_flat(value, prefix + key + ".") if isinstance(value, dict) else [])]
    return keys


def check_spec(spec: Spec) -> Path:
    """Parse the base config with the overrides and each end of every range; return the sweep's run folder."""
    where = str(spec.path)
    try:
        config = parse_fit(spec.fit_args())
    except ValueError as err:
        _fail(where, f"the base config and overrides are not a valid fit config: {err}")
    known = _flat(config)
    for name in spec.params:
        if any(name == r or name.startswith(r + ".") for r in RESERVED):
            _fail(where, f"search.params.{name} is set by the sweep itself (run folders, checkpoints); remove it")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see mnist-rnn fit --print_config for the names"
            _fail(where, f"search.params.{name} is not a fit option{hint}")
    for end in (0, -1):  # the first and last values of every range and list of choices
        values = [flag(k, d.choices[end] if isinstance(d, CategoricalDistribution) else (d.low, d.high)[end])
                  for k, d in spec.params.items()]
        try:
            if values:
                parse_fit(spec.fit_args() + values)
        except ValueError as err:
            _fail(where, f"the search space gives values the fit parser refuses: {err}")
    logger = config["trainer"].get("logger")
    save_dir = (logger.get("init_args") or {}).get("save_dir") if isinstance(logger, dict) else None
    if save_dir is None:
        _fail(where, "the base config has no run logger (trainer.logger with save_dir); a sweep needs its run folders")
    return Path(save_dir) / spec.name

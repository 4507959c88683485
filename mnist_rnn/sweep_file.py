"""The sweep file of `mnist-rnn sweep`, read and checked against the `fit` parser before any trial.

It names base configs plus overrides, and either `seeds:` (a list, or a count meaning 1..N) or
`search:` (Optuna distributions over any fit option, n_trials, the metric). See docs/sweep.md.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from mnist_rnn.errors import ConfigError

# What the model logs during fit, and so what a sweep can optimise (test/* is logged only by test).
FIT_METRICS = ("val/acc_best", "val/acc", "val/loss", "train/acc", "train/loss")
KEYS = {"": ("name", "base", "overrides", "seeds", "search"),
        "search.": ("params", "n_trials", "metric", "direction", "sampler", "sampler_seed", "pruner"),
        "param": ("type", "low", "high", "step", "log", "choices")}
RESERVED = ("trainer.logger", "ckpt_path")  # set by the sweep for every trial
DIRECTIONS = {"maximize": "maximize", "max": "maximize", "minimize": "minimize", "min": "minimize"}


class SweepError(ConfigError):
    """The sweep file, its base config or the sweep folder is not usable; raised before any trial starts."""


@dataclass
class Spec:
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
        # The base configs' text, not their paths: machines sharing a study install them in different places.
        settings = {"base": [p.read_text() for p in self.base], "overrides": self.overrides, "seeds": self.seeds,
                    "params": {k: optuna.distributions.distribution_to_json(d) for k, d in self.params.items()},
                    **{k: getattr(self, k) for k in KEYS["search."][1:]}}
        return json.loads(json.dumps(settings))  # as the study's storage gives it back

    def fit_args(self) -> list[str]:
        """The `fit` arguments every trial shares: the base configs, then the overrides (a -c value that
        is not a file is read as YAML text and merged as a file is, so `callbacks+:` appends)."""
        args = [arg for path in self.base for arg in ("-c", str(path))]
        overrides = yaml.safe_dump(self.overrides, default_flow_style=True, width=10**6).strip()
        return args + (["-c", overrides] if self.overrides else [])


def find_config(name: str, near: Optional[Path] = None) -> Optional[Path]:
    """A config as given, next to `near`, or among the packaged configs, as `mnist-rnn fit -c` finds them."""
    from mnist_rnn.cli import config_file  # cli.py imports the sweep only inside main(): no circle

    return next((p for p in (Path(name), *([near / name] if near else []), Path(config_file(name))) if p.is_file()), None)


def load_spec(given: str) -> Spec:
    path = find_config(given)
    if path is None:
        raise SweepError(f"sweep file {given} not found; pass a YAML file, e.g. -c conf/sweeps/seeds.yaml")

    def need(ok: Any, message: str) -> None:
        if not ok:
            raise SweepError(f"{path}: {message}")

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise SweepError(f"{path}: cannot be read as YAML ({' '.join(str(err).split())})") from None
    need(isinstance(raw, dict), "must be a YAML mapping with base/overrides and seeds or search")
    known(need, raw, "")
    name = str(raw.get("name") or path.stem)
    need("/" not in name and name not in (".", ".."), f"name {name!r} must be a plain folder name (it becomes runs/<name>/)")
    base = []
    for base_name in [raw["base"]] if isinstance(raw.get("base"), str) else raw.get("base") or []:
        base.append(find_config(str(base_name), near=path.parent))
        need(base[-1], f"base config {base_name} does not exist; name a fit config such as default.yaml or conf/tiny.yaml")
    spec = Spec(path=path, name=name, base=base, overrides=raw.get("overrides") or {})
    need(isinstance(spec.overrides, dict), "overrides must be a mapping of fit settings, written as in a fit config")
    seeds, search = raw.get("seeds"), raw.get("search")
    need(seeds is not None or search is not None, "give seeds: (a list, or a count) or search: (params and n_trials)")
    need(seeds is None or search is None, "give seeds: or search:, not both; search, then run the best settings over seeds")
    if seeds is not None:
        spec.seeds = list(range(1, seeds + 1)) if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
        integers = isinstance(spec.seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in spec.seeds)
        need(integers and spec.seeds,
             f"seeds must be a non-empty list of integers or a positive count, got {seeds!r}")
        need(len(set(spec.seeds)) == len(spec.seeds), f"seeds repeat a value: {spec.seeds}")
        spec.n_trials = len(spec.seeds)
    else:
        read_search(need, search, spec)
    return spec


def known(need, mapping: dict, at: str, keys: str = "") -> None:
    unknown = sorted(set(mapping) - set(KEYS[keys or at]))
    need(not unknown, f"unknown key {at}{unknown[0] if unknown else ''}; the keys are {', '.join(KEYS[keys or at])}")


def read_search(need, search: Any, spec: Spec) -> None:
    need(isinstance(search, dict), "search must be a mapping with params, n_trials, metric, direction")
    known(need, search, "search.")
    n_trials = spec.n_trials = search.get("n_trials")
    need(isinstance(n_trials, int) and not isinstance(n_trials, bool) and n_trials > 0,
         f"search.n_trials must be a positive integer, got {n_trials!r}")
    spec.metric = str(search.get("metric", spec.metric))
    need(spec.metric in FIT_METRICS,
         f"search.metric {spec.metric} is not logged during fit; choose one of {', '.join(FIT_METRICS)}")
    direction = str(search.get("direction", spec.direction))
    need(direction in DIRECTIONS, f"search.direction must be maximize or minimize, got {direction!r}")
    spec.direction, spec.sampler = DIRECTIONS[direction], str(search.get("sampler", spec.sampler))
    need(spec.sampler in ("tpe", "random"), f"search.sampler must be tpe or random, got {spec.sampler!r}")
    spec.sampler_seed = search.get("sampler_seed")
    need(spec.sampler_seed is None or type(spec.sampler_seed) is int,
         f"search.sampler_seed must be an integer, got {spec.sampler_seed!r}")
    spec.pruner = search.get("pruner", spec.pruner)
    make_pruner(spec, str(spec.path))  # checked now; each worker builds its own
    params = search.get("params")
    need(isinstance(params, dict) and params, "search.params must map option names (like model.lr) to ranges or choices")
    spec.params = {str(name): distribution(need, f"search.params.{name}", rule) for name, rule in params.items()}


def distribution(need, at: str, rule: Any) -> BaseDistribution:
    """An Optuna distribution: categorical with choices, else int when both bounds are integers, else float."""
    need(isinstance(rule, dict), f"{at} must be a mapping: {{low: .., high: .., log: true}} or {{choices: [..]}}")
    known(need, rule, f"{at}.", "param")
    low, high = rule.get("low"), rule.get("high")
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
    kind = rule.get("type") or ("categorical" if "choices" in rule else "int" if ints else "float")
    if kind == "categorical":
        choices = rule.get("choices")
        need(isinstance(choices, list) and choices, f"{at}.choices is empty; list at least one value")
        need(all(c is None or isinstance(c, (bool, int, float, str)) for c in choices),
             f"{at}.choices must be plain values (numbers, strings, true/false, null)")
        return CategoricalDistribution(choices)
    need(kind in ("float", "int"), f"{at}.type must be float, int or categorical, got {kind!r}")
    for bound, value in (("low", low), ("high", high)):
        need(isinstance(value, (int, float)) and not isinstance(value, bool), f"{at}.{bound} must be a number, got {value!r}")
    # Optuna takes low == high (one value); a sweep over one value is a mistake.
    need(low < high, f"{at} is an empty range (low {low} >= high {high}); make low smaller than high")
    log, step = bool(rule.get("log", False)), rule.get("step")
    try:  # Optuna's own checks (log needs low > 0, a step must divide the range...), now rather than mid-sweep
        if kind == "int":
            return IntDistribution(int(low), int(high), log=log, step=step or 1)
        return FloatDistribution(float(low), float(high), log=log, step=step)
    except (ValueError, TypeError) as err:
        need(False, f"{at}: {' '.join(str(err).split())}")


def make_pruner(spec: Spec, where: str = "sweep") -> optuna.pruners.BasePruner:
    """`median` (Optuna's MedianPruner: stop a trial below the median of the trials before it at the
    same epoch), `none`, or {name: median, n_startup_trials: .., n_warmup_steps: ..}."""
    if spec.seeds is not None or spec.pruner in (None, "none", False):  # a seed sweep prunes nothing
        return optuna.pruners.NopPruner()
    kwargs = dict(spec.pruner) if isinstance(spec.pruner, dict) else {"name": spec.pruner}
    try:
        if kwargs.pop("name", "median") != "median":
            raise ValueError(f"must be median or none, got {spec.pruner!r}")
        # Two finished trials before any pruning, and never in the first epoch: one epoch of a
        # one-cycle schedule says little about the end.
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 2, "n_warmup_steps": 1, **kwargs})
    except (TypeError, ValueError) as err:
        raise SweepError(f"{where}: search.pruner {' '.join(str(err).split())}") from None


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


def _names(config: dict, at: str = "") -> list[str]:
    """Every option's dotted name, e.g. model.lr."""
    names = []
    for key, value in config.items():
        names += [at + key, *(_names(value, at + key + ".") if isinstance(value, dict) else ())]
    return names


def check_spec(spec: Spec) -> Path:
    """Parse the base config with the overrides, and with both ends of every range; return the sweep's run folder."""
    def fail(message: str) -> None:
        raise SweepError(f"{spec.path}: {message}")

    try:
        config = parse_fit(spec.fit_args())
    except ValueError as err:
        fail(f"the base config and overrides are not a valid fit config: {err}")
    for name in spec.params:
        if any(name == r or name.startswith(r + ".") for r in RESERVED):
            fail(f"search.params.{name} is set by the sweep itself (run folders, checkpoints); remove it")
        if name not in _names(config):
            close = difflib.get_close_matches(name, _names(config), n=1)
            fail(f"search.params.{name} is not a fit option" + (f"; did you mean {close[0]}?" if close else ""))
    for end in (0, -1) if spec.params else ():  # the first and last value of every range and list of choices
        values = [flag(k, d.choices[end] if isinstance(d, CategoricalDistribution) else (d.low, d.high)[end])
                  for k, d in spec.params.items()]
        try:
            parse_fit(spec.fit_args() + values)
        except ValueError as err:
            fail(f"the search space gives values the fit parser refuses: {err}")
    trainer = config["trainer"]
    if trainer.get("devices") not in ("auto", 1, "1") or trainer.get("num_nodes") != 1:
        fail(f"trainer.devices {trainer.get('devices')} / num_nodes {trainer.get('num_nodes')}: a trial runs in its worker's"
             " process on one device (DDP would restart the sweep); set devices 1 and use --parallel N")
    logger = trainer.get("logger")
    save_dir = (logger.get("init_args") or {}).get("save_dir") if isinstance(logger, dict) else None
    if save_dir is None:
        fail("the base config has no run logger (trainer.logger with save_dir); a sweep needs its run folders")
    return Path(save_dir) / spec.name

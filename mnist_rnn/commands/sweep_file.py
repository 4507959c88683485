"""The sweep file of `mnist-rnn sweep` (docs/sweep.md): base configs plus overrides, and `seeds:` (a list, or
a count meaning 1..N) or `search:` (Optuna distributions over fit options), checked before any trial starts."""

import contextlib
import difflib
import io
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import optuna
import yaml
from jsonargparse import ArgumentError

from mnist_rnn.commands.options import Count, OneLineParser, constrained, one_line, plain
from mnist_rnn.errors import ConfigError as SweepError  # the sweep file, its base config or the sweep folder

# What the model logs during fit, and so what a sweep can optimise (test/* is logged only by test).
Metric = Literal["val/acc_best", "val/acc", "val/loss", "train/acc", "train/loss"]
FIT_METRICS = typing.get_args(Metric)
RESERVED = ("trainer.logger.", "ckpt_path.")  # set by the sweep for every trial (with a dot: whole names only)
GROUPS = {"trainer", "model", "data"}  # the fit config's sections that hold settings of their own
MAX_SEEDS = 10_000  # a larger count is a typo, not a sweep (each seed is a whole fit), and would fill memory as a list
# Letters, digits, . _ - only: a newline or a NUL would split the one-line messages or the folder's path.
FolderName = constrained("FolderName", str, lambda name: re.fullmatch(r"[\w.-]+", name) and name not in (".", ".."),
                         "a plain folder name of letters, digits, . _ - (it becomes runs/<name>/)")  # fmt: skip
# A bound or step: an int as written (an int range), else a float. Not Union[int, float]: typing caches unions and takes
# Union[float, int] made earlier (by any module) for it, and jsonargparse, trying float first, would read 64 as 64.0.
Number = constrained("Number", float, math.isfinite, "a finite number")
SeedCount = constrained("SeedCount", int, lambda n: 1 <= n <= MAX_SEEDS, f"a count in 1..{MAX_SEEDS} (meaning seeds 1..N)")


@dataclass
class Rule:
    """The values a search draws for one fit option: a range (low, high; int when both are integers) or choices.

    Args:
        type: float, int or categorical; by default told by the bounds, or categorical with choices
        low: the range's lowest value
        high: the range's highest value
        step: Optuna's step between values (int: 1)
        log: draw log-uniformly (Optuna's log)
        choices: the values of a categorical option (as written: the fit parser checks them)
    """

    type: Optional[Literal["float", "int", "categorical"]] = None
    low: Union[int, Number, None] = None
    high: Union[int, Number, None] = None
    step: Union[int, Number, None] = None
    log: bool = False
    choices: Optional[list[Any]] = None


@dataclass
class Search:
    """An Optuna search: n_trials trials, each a fit with settings drawn from params.

    Args:
        n_trials: how many trials the study runs in all
        params: fit options by their full name (like model.lr), each with its Rule
        metric: what the search optimises, one logged during fit
        direction: maximize, or minimize for a loss
        sampler: Optuna's TPE sampler, or random
        sampler_seed: the sampler's seed (the same trials in the same order, one worker)
        pruner: median (Optuna's MedianPruner, or a mapping of its settings with name: median), or none
    """

    n_trials: Count
    params: dict[str, Rule] = field(default_factory=dict)
    metric: Metric = "val/acc_best"
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["tpe", "random"] = "tpe"
    sampler_seed: Optional[int] = None
    pruner: Union[Literal["median", "none", False], dict[str, Any], None] = "median"


@dataclass
class SweepFile:
    """A sweep file (docs/sweep.md): fit configs plus overrides, run over seeds or searched.

    Args:
        name: the sweep's name and folder, runs/<name>/ (default: the file's name)
        base: a fit config's name, or a list of them (default: conf/default.yaml alone)
        overrides: fit settings on top, written as in a fit config (as written: the fit parser checks them)
        seeds: a seed sweep: a list of seeds, or a count N meaning 1..N
        search: a search instead of seeds
    """

    name: FolderName
    base: Union[str, list[str]] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: Union[SeedCount, list[int], None] = None
    search: Optional[Search] = None


@dataclass
class Spec:  # a checked sweep file: base as paths, seeds as a list, the search's params as (kind, keywords of trial.suggest_<kind>)
    path: Path
    name: str
    base: list[Path]
    overrides: dict
    seeds: Optional[list[int]]
    params: dict[str, tuple[str, dict]]
    n_trials: int
    metric: str = "val/acc_best"
    direction: str = "maximize"
    sampler: str = "tpe"
    sampler_seed: Optional[int] = None
    pruner: Any = "median"

    def as_dict(self) -> dict:  # what makes two runs the same sweep (kept in the study, compared on --resume)
        # The base configs' text, not their paths: machines sharing a study install them in different places.
        settings = {**vars(self), "base": [p.read_text() for p in self.base]}
        return json.loads(json.dumps({k: v for k, v in settings.items() if k not in ("path", "name")}))  # as stored

    def fit_args(self) -> list[str]:  # the base configs, then the overrides (a -c value that is not a file is read as YAML text)
        args = [arg for path in self.base for arg in ("-c", str(path))]
        overrides = yaml.safe_dump(self.overrides, default_flow_style=True, width=10**6).strip()
        return args + (["-c", overrides] if self.overrides else [])


def need(ok: Any, message: str) -> None:
    if not ok:
        raise SweepError(message)


@contextlib.contextmanager
def about(path: Path):  # every refusal inside names the sweep file first
    try:
        yield
    except SweepError as err:
        raise SweepError(f"{path}: {' '.join(str(err).split())}") from None


def typed(cls: type, raw: Any, at: str, kept: tuple[str, ...] = ()) -> Any:
    """raw, a mapping read from the sweep file, as a cls: jsonargparse checks each key against its field's type. The
    kept fields are left as read: a section parsed on its own (a refusal in it names its own key), or fit settings,
    which the fit parser checks (check_spec; jsonargparse would read a class_path in an Any value as a class's)."""
    hints = typing.get_type_hints(cls)
    need(isinstance(raw, dict), f"{at.rstrip('.')} must be a mapping of {', '.join(hints)}")
    parser = OneLineParser(exit_on_error=False)
    parser.add_class_arguments(cls, skip=set(kept))
    try:
        config = parser.parse_object({key: value for key, value in raw.items() if key not in kept})
    except ArgumentError as err:
        raise SweepError(one_line(str(err), hints, at)) from None
    return cls(**plain(config.as_dict()), **{key: raw[key] for key in kept if key in raw})


def find_config(name: str, near: Optional[Path] = None) -> Optional[Path]:  # as given, next to `near`, or packaged (as fit -c)
    from mnist_rnn.commands.cli import config_file  # cli.py never imports the sweep: no circle

    return next((p for p in (Path(name), *([near / name] if near else []), Path(config_file(name))) if p.is_file()), None)


def load_spec(given: str) -> Spec:
    path = find_config(given)
    need(path, f"sweep file {given} not found; pass a YAML file, e.g. -c conf/sweeps/seeds.yaml")
    with about(path):
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
            raise SweepError(f"cannot be read as YAML ({err})") from None
        need(isinstance(raw, dict), "must be a YAML mapping with base/overrides and seeds or search")
        sweep = typed(SweepFile, {**raw, "name": raw.get("name") or path.stem}, "", kept=("overrides", "search"))
        names = [sweep.base] if isinstance(sweep.base, str) else sweep.base or []  # base: null is the default, as before
        base = [find_config(name, near=path.parent) for name in names]
        for name, found in zip(names, base):
            need(found, f"base config {name} does not exist; name a fit config such as default.yaml or conf/tiny.yaml")
        need(isinstance(sweep.overrides, dict) and all(isinstance(sweep.overrides[k], dict) for k in GROUPS & set(sweep.overrides)),
             "overrides must be a mapping of fit settings, written as in a fit config (trainer, model and data are mappings)")
        need(sweep.seeds is not None or sweep.search is not None, "give seeds: (a list, or a count) or search: (params and n_trials)")
        need(sweep.seeds is None or sweep.search is None, "give seeds: or search:, not both; search, then run the best settings over seeds")
        common = {"path": path, "name": sweep.name, "base": base, "overrides": sweep.overrides}
        if sweep.search is None:
            seeds = list(range(1, sweep.seeds + 1)) if isinstance(sweep.seeds, int) else sweep.seeds
            need(seeds, "seeds is an empty list; list at least one seed, or give a count")
            need(len(set(seeds)) == len(seeds), f"seeds repeat a value: {seeds}")
            return Spec(**common, seeds=seeds, params={}, n_trials=len(seeds))
        search = typed(Search, sweep.search, "search.", kept=("params",))
        spec = Spec(**common, seeds=None, **{**vars(search), "params": {}})
        make_pruner(spec)  # checked now; each worker builds its own
        need(isinstance(search.params, dict) and search.params, "search.params must map option names (like model.lr) to ranges or choices")
        for name, rule in search.params.items():
            spec.params[str(name)] = distribution(f"search.params.{name}", typed(Rule, rule, f"search.params.{name}.", ("choices",)))
    return spec


def distribution(at: str, rule: Rule) -> tuple[str, dict]:
    low, high, choices = rule.low, rule.high, rule.choices
    kind = rule.type or ("categorical" if choices is not None else "int" if type(low) is type(high) is int else "float")
    if kind == "categorical":
        need(isinstance(choices, list), f"{at}.choices must be a list of values, got {choices!r}")
        need(choices, f"{at}.choices is empty; list at least one value")
        return kind, {"choices": choices}
    need(low is not None and high is not None, f"{at} needs low and high (numbers), or choices")
    # Optuna takes low == high (one value); a sweep over one value is a mistake.
    need(low < high, f"{at} is an empty range (low {low} >= high {high}); make low smaller than high")
    keywords = {"low": low, "high": high, "step": rule.step or (1 if kind == "int" else None), "log": rule.log}
    try:  # Optuna's own checks (log needs low > 0, a step must divide the range...), now rather than mid-sweep
        (optuna.distributions.IntDistribution if kind == "int" else optuna.distributions.FloatDistribution)(**keywords)
    except (ValueError, TypeError) as err:
        raise SweepError(f"{at}: {err}") from None
    return kind, keywords


def make_pruner(spec: Spec) -> optuna.pruners.BasePruner:
    if spec.seeds is not None or spec.pruner in (None, "none", False):  # a seed sweep prunes nothing
        return optuna.pruners.NopPruner()
    kwargs = dict(spec.pruner) if isinstance(spec.pruner, dict) else {"name": spec.pruner}
    need(kwargs.pop("name", "median") == "median", f"search.pruner must be median or none, got {spec.pruner!r}")
    try:  # Two finished trials before any pruning, and never in the first epoch (one says little about the end).
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 2, "n_warmup_steps": 1, **kwargs})
    except (TypeError, ValueError) as err:
        raise SweepError(f"search.pruner {err}") from None


def flag(name: str, value: Any) -> str:  # --name=value as the fit parser reads it (JSON for anything but plain strings)
    return f"--{name}={value if isinstance(value, str) else json.dumps(value)}"


def parse_fit(args: list[str], refused: str) -> dict:  # the whole `fit` config they give: LightningCLI's --print_config, in this process
    from mnist_rnn.commands.cli import cli_main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli_main(["fit", *args, "--print_config"])
    except SystemExit as exit:
        if exit.code not in (0, None):
            lines = [line for line in err.getvalue().splitlines() if line.strip()] or [f"exit status {exit.code}"]
            raise SweepError(f"{refused}: " + re.sub(r" \(options: [^)]*\)$", "", lines[-1].removeprefix("mnist-rnn: error: "))) from None
    return yaml.safe_load(out.getvalue())


def option_names(config: dict, at: str = "") -> list[str]:  # every option's dotted name, e.g. model.lr
    return [n for k, v in config.items() for n in (at + k, *(option_names(v, f"{at}{k}.") if isinstance(v, dict) else ()))]


def check_spec(spec: Spec) -> Path:
    """Parse the base config with the overrides, and with both ends of every range; return the sweep's run folder."""
    with about(spec.path):
        config = parse_fit(spec.fit_args(), "the base config and overrides are not a valid fit config")
        names = option_names(config)
        for name in spec.params:
            need(not f"{name}.".startswith(RESERVED), f"search.params.{name} is set by the sweep (run folders, checkpoints); remove it")
            close = difflib.get_close_matches(name, names, n=1)
            need(name in names, f"search.params.{name} is not a fit option" + (f"; did you mean {close[0]}?" if close else ""))
        for end in (0, -1) if spec.params else ():  # the first and last value of every range and list of choices
            ends = [flag(k, (kw.get("choices") or (kw["low"], kw["high"]))[end]) for k, (_, kw) in spec.params.items()]
            parse_fit(spec.fit_args() + ends, "the search space gives values the fit parser refuses")
        trainer, logger = config["trainer"], config["trainer"].get("logger")
        need(trainer.get("devices") in ("auto", 1, "1") and trainer.get("num_nodes") == 1, f"trainer.devices {trainer.get('devices')} /"
             f" num_nodes {trainer.get('num_nodes')}: a trial runs in its worker's process on one device; set devices 1, use --parallel N")
        save_dir = (logger.get("init_args") or {}).get("save_dir") if isinstance(logger, dict) else None
        need(save_dir is not None, "the base config has no run logger (trainer.logger with save_dir); a sweep needs its run folders")
    return Path(save_dir) / spec.name

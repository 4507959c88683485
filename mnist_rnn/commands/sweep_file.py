"""The sweep file of `mnist-rnn sweep` (docs/sweep.md): base configs plus overrides, and `seeds:` (a list, or
a count meaning 1..N) or `search:` (Optuna distributions over fit options), checked before any trial starts."""

import contextlib
import difflib
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import optuna
import yaml

from mnist_rnn.errors import ConfigError as SweepError  # the sweep file, its base config or the sweep folder

# What the model logs during fit, and so what a sweep can optimise (test/* is logged only by test).
FIT_METRICS = ("val/acc_best", "val/acc", "val/loss", "train/acc", "train/loss")
# A search's settings and their defaults; params: name -> (kind, keywords of trial.suggest_<kind>).
SEARCH = {"params": {}, "n_trials": None, "metric": "val/acc_best", "direction": "maximize", "sampler": "tpe",
          "sampler_seed": None, "pruner": "median"}
RESERVED = ("trainer.logger.", "ckpt_path.")  # set by the sweep for every trial (with a dot: whole names only)
GROUPS = {"trainer", "model", "data"}  # the fit config's sections that hold settings of their own
MAX_SEEDS = 10_000  # a larger count is a typo, not a sweep (each seed is a whole fit), and would fill memory as a list


class Spec(SimpleNamespace):  # path, name, base (paths), overrides, seeds (None for a search), and the keys of SEARCH
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


def known(mapping: dict, at: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(mapping) - set(keys), key=str)  # YAML keys may be numbers too
    need(not unknown, f"unknown key {at}{unknown[0] if unknown else ''}; the keys are {', '.join(keys)}")


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
        known(raw, "", ("name", "base", "overrides", "seeds", "search"))
        name = str(raw.get("name") or path.stem)
        # Letters, digits, . _ - only: a newline or a NUL would split the one-line messages or the folder's path.
        need(re.fullmatch(r"[\w.-]+", name) and name not in (".", ".."),
             f"name {name!r} must be a plain folder name of letters, digits, . _ - (it becomes runs/<name>/)")
        names = [raw["base"]] if isinstance(raw.get("base"), str) else raw.get("base") or []
        need(isinstance(names, list), f"base must be a fit config's name or a list of them, got {raw.get('base')!r}")
        spec = Spec(path=path, name=name, base=[find_config(str(n), near=path.parent) for n in names],
                    overrides=raw.get("overrides") or {}, seeds=None, **SEARCH)
        for base_name, found in zip(names, spec.base):
            need(found, f"base config {base_name} does not exist; name a fit config such as default.yaml or conf/tiny.yaml")
        need(isinstance(spec.overrides, dict) and all(isinstance(spec.overrides[k], dict) for k in GROUPS & set(spec.overrides)),
             "overrides must be a mapping of fit settings, written as in a fit config (trainer, model and data are mappings)")
        seeds, search = raw.get("seeds"), raw.get("search")
        need(seeds is not None or search is not None, "give seeds: (a list, or a count) or search: (params and n_trials)")
        need(seeds is None or search is None, "give seeds: or search:, not both; search, then run the best settings over seeds")
        if search is None:
            spec.seeds = list(range(1, seeds + 1)) if type(seeds) is int and seeds <= MAX_SEEDS else seeds
            need(isinstance(spec.seeds, list) and spec.seeds and all(type(s) is int for s in spec.seeds),
                 f"seeds must be a non-empty list of integers or a positive count, got {seeds!r}")
            need(len(set(spec.seeds)) == len(spec.seeds), f"seeds repeat a value: {spec.seeds}")
            spec.n_trials = len(spec.seeds)
            return spec
        need(isinstance(search, dict), "search must be a mapping with params, n_trials, metric, direction")
        known(search, "search.", tuple(SEARCH))
        vars(spec).update(search)
        for key, ok, want in (("n_trials", type(spec.n_trials) is int and spec.n_trials > 0, "a positive integer"),
                              ("direction", spec.direction in ("maximize", "minimize"), "maximize or minimize"),
                              ("sampler", spec.sampler in ("tpe", "random"), "tpe or random"),
                              ("sampler_seed", spec.sampler_seed is None or type(spec.sampler_seed) is int, "an integer")):
            need(ok, f"search.{key} must be {want}, got {getattr(spec, key)!r}")
        need(spec.metric in FIT_METRICS, f"search.metric {spec.metric} is not logged during fit; choose one of {', '.join(FIT_METRICS)}")
        make_pruner(spec)  # checked now; each worker builds its own
        need(isinstance(spec.params, dict) and spec.params, "search.params must map option names (like model.lr) to ranges or choices")
        spec.params = {str(name): distribution(f"search.params.{name}", rule) for name, rule in spec.params.items()}
    return spec


def distribution(at: str, rule: Any) -> tuple[str, dict]:
    need(isinstance(rule, dict), f"{at} must be a mapping: {{low: .., high: .., log: true}} or {{choices: [..]}}")
    known(rule, f"{at}.", ("type", "low", "high", "step", "log", "choices"))
    low, high, choices = rule.get("low"), rule.get("high"), rule.get("choices")
    kind = rule.get("type") or ("categorical" if "choices" in rule else "int" if type(low) is type(high) is int else "float")
    if kind == "categorical":
        need(isinstance(choices, list) and choices, f"{at}.choices is empty; list at least one value")
        return kind, {"choices": choices}
    need(kind in ("float", "int"), f"{at}.type must be float, int or categorical, got {kind!r}")
    need(type(low) in (int, float) and type(high) in (int, float), f"{at}.low and .high must be numbers, got {low!r} and {high!r}")
    # Optuna takes low == high (one value); a sweep over one value is a mistake.
    need(low < high, f"{at} is an empty range (low {low} >= high {high}); make low smaller than high")
    keywords = {"low": low, "high": high, "step": rule.get("step") or (1 if kind == "int" else None), "log": bool(rule.get("log"))}
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

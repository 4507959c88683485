"""`mnist-rnn sweep -c SWEEP.yaml [--resume] [--parallel N] [--storage URL]`: the trials, on an Optuna study.

The sweep is an Optuna study (SQLite in runs/<name>/sweep.db, or any RDB URL with --storage) and
one or more workers calling `study.optimize` on it, Optuna's "easy parallelization": --parallel N
starts N worker processes, other machines join with the same --storage. A trial is an ordinary
`mnist-rnn fit` (cli_main, in the worker's process) in its own run folder, then `trainer.test` of
its best checkpoint. Optuna's heartbeat marks the trial of a killed worker failed, and
RetryHeartbeatStaleTrialCallback queues it again; the retry resumes from the run's last.ckpt.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import multiprocessing
import os
import shlex
import signal
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn, Optional

import optuna
from lightning.pytorch.callbacks import Callback
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback as Retry, fail_stale_trials
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mnist_rnn import resume
from mnist_rnn.errors import MnistRnnError, TrainingStopped
from mnist_rnn.sweep_file import Spec, SweepError, check_spec, flag, load_spec, make_pruner

# A live worker beats every 5 s; six missed beats in a row (30 s) mean it is gone. A resume after a
# kill waits that long before it retries the killed trial.
HEARTBEAT_S, GRACE_S = 5, 30
SQLITE_TIMEOUT_S = 60  # how long a writer waits for SQLite's lock (each trial writes once per epoch and beat)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFailed(MnistRnnError):
    """A trial's `fit` or `test` failed; the message names its log."""


class KeepTrainer(Callback):
    """Holds the trial's Trainer, so that a pruned fit (which ends in TrialPruned) still tells its run folder."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer


def percent(value: Optional[float]) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


class Sweep:
    def __init__(self, spec: Spec, folder: Path, storage_url: str, threads: Optional[int]) -> None:
        self.spec, self.folder, self.threads = spec, folder, threads
        storage = RDBStorage(
            storage_url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=Retry(inherit_intermediate_values=True),
            engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if storage_url.startswith("sqlite") else {},
        )
        sampler = (optuna.samplers.RandomSampler if spec.sampler == "random" else optuna.samplers.TPESampler)(seed=spec.sampler_seed)
        # load_if_exists: workers and machines that start together all find the one study.
        self.study = optuna.create_study(storage=storage, study_name=spec.name, sampler=sampler, pruner=make_pruner(spec),
                                         direction=spec.direction, load_if_exists=True)

    def trials(self, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def prepare(self, resume_stopped: bool) -> int:
        """Record the sweep file in a new study, or check it against the stored one; queue the seeds
        and, on --resume, the trials a Ctrl-C or SIGTERM stopped. Returns the finished trials."""
        stored = self.study.user_attrs.get("spec")
        if stored is not None and stored != self.spec.as_dict():
            changed = ", ".join(k for k, v in self.spec.as_dict().items() if stored.get(k) != v)
            raise SweepError(f"{self.spec.path} differs from the sweep stored in runs/{self.spec.name}/ or --storage"
                             f" ({changed} changed); give the changed sweep another name:")
        if stored is None:
            self.study.set_user_attr("spec", self.spec.as_dict())
        retried = {n for t in self.trials() for n in Retry.retry_history(t)}
        if resume_stopped:
            for trial in self.trials(TrialState.FAIL):
                if trial.user_attrs.get("stopped") and trial.number not in retried:
                    Retry(inherit_intermediate_values=True)(self.study, trial)
        if self.spec.seeds and (stored is None or resume_stopped):
            taken = {t.params.get("seed") for t in self.trials(*DONE, TrialState.WAITING, TrialState.RUNNING)}
            for seed in self.spec.seeds:
                if seed not in taken:  # a first start, or a seed whose trial failed
                    self.study.enqueue_trial({"seed": seed})
        return len(self.trials(*DONE))

    def enough(self) -> bool:
        """n_trials done or under way (MaxTrialsCallback's rule, counting running trials); a seed sweep's
        trials come from its queue only."""
        if len(self.trials(*DONE, TrialState.RUNNING)) >= self.spec.n_trials:
            return True
        return bool(self.spec.seeds) and not self.trials(TrialState.WAITING)

    def work(self) -> None:
        """Run trials until the study has enough, then wait for the others' (a dead worker's is retried here)."""
        waited = False
        while True:
            fail_stale_trials(self.study)
            if not self.enough():
                stop = lambda study, trial: study.stop() if self.enough() else None  # noqa: E731
                self.study.optimize(self.objective, callbacks=[stop], catch=())
            running = self.trials(TrialState.RUNNING)
            if not running:
                return
            if not waited:
                print(f"waiting for trial(s) {', '.join(str(t.number) for t in running)}: running elsewhere,"
                      f" or killed (retried after {GRACE_S} s without a heartbeat)", flush=True)
                waited = True
            time.sleep(HEARTBEAT_S)

    def objective(self, trial: optuna.Trial) -> float:
        spec = self.spec
        params = {name: suggest(trial, name, d) for name, d in spec.params.items()}
        seed = trial.suggest_categorical("seed", spec.seeds) if spec.seeds else None
        origin = Retry.retried_trial_number(next(t for t in self.trials() if t.number == trial.number))
        run_name = f"seed_{seed}" if spec.seeds else f"trial_{trial.number if origin is None else origin:03d}"
        again = f" (trial {origin} again, resumed)" if origin is not None else ""
        print(f"trial {trial.number}{again}: {'  '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in params.items()) or f'seed {seed}'}", flush=True)
        started, kept = time.perf_counter(), KeepTrainer()
        try:
            cli = self.fit(trial, run_name, params, seed, kept)
            trainer = cli.trainer
            if spec.metric not in trainer.callback_metrics:
                raise TrialFailed(f"trial {trial.number} did not log {spec.metric}; choose another search.metric")
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            if not best:
                raise TrialFailed(f"trial {trial.number} saved no checkpoint to test; keep a ModelCheckpoint in the config")
            value = float(trainer.callback_metrics[spec.metric])
            self.record(trial, trainer, started, best_checkpoint=best)  # before the test replaces the metrics
            with self.logged_to(self.folder / run_name / "test.log"):
                tested = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)
            trial.set_user_attr("test/acc", tested[0]["test/acc"])
            trial.set_user_attr("wall_s", round(time.perf_counter() - started, 1))
        except optuna.TrialPruned:
            self.record(trial, kept.trainer, started)
            print(f"trial {trial.number}: pruned after epoch {kept.trainer.current_epoch + 1}", flush=True)
            raise
        except (TrainingStopped, KeyboardInterrupt):
            trial.set_user_attr("stopped", True)  # not broken: --resume queues it again
            raise
        print(f"trial {trial.number}: {spec.metric} {value:.4f}  test/acc {percent(trial.user_attrs['test/acc'])}"
              f"  ({trial.user_attrs['wall_s']:.0f} s)  {trial.user_attrs['run']}", flush=True)
        return value

    @staticmethod
    @contextlib.contextmanager
    def logged_to(log: Path):
        """stdout and stderr of a fit or test into the run's log, line by line (a kill loses nothing written)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
            logging.disable(logging.INFO)  # Lightning's info lines go to handlers bound to the terminal
            try:
                yield handle
            finally:
                logging.disable(logging.NOTSET)

    def fit(self, trial: optuna.Trial, run_name: str, params: dict, seed: Optional[int], kept: KeepTrainer):
        from mnist_rnn.cli import cli_main

        args = ["fit", *self.spec.fit_args(), *(flag(k, v) for k, v in params.items())]
        args += [flag("seed_everything", seed)] if seed is not None else []
        args += [flag("threads", self.threads)] if self.threads else []
        args += [flag("trainer.logger.init_args.save_dir", str(self.folder)), flag("trainer.logger.init_args.name", run_name)]
        if resume.newest_checkpoint(self.folder / run_name) is not None:  # an earlier attempt's (fit resolves `last` alike)
            args += ["--ckpt_path", resume.LAST]
        # The trial's callbacks go to Lightning as persistent callbacks (trainer_defaults), not into
        # config.yaml, so `mnist-rnn fit -c runs/.../config.yaml` reruns the trial as a plain fit.
        callbacks = [kept, *([PyTorchLightningPruningCallback(trial, self.spec.metric)] if self.spec.is_search else [])]
        log = self.folder / run_name / "fit.log"
        with self.logged_to(log) as handle:
            handle.write(f"$ {shlex.join(['mnist-rnn', *args])}\n")
            try:
                return cli_main(args, callbacks=callbacks)
            except SystemExit as exit:  # a value the fit parser refused (printed to the log)
                error = TrialFailed(f"trial {trial.number} failed: fit exited with status {exit.code} (log: {log})")
            except (optuna.TrialPruned, TrainingStopped):
                raise
            except MnistRnnError as err:
                error = TrialFailed(f"trial {trial.number} failed: {err} (log: {log})")
        trial.set_user_attr("error", str(error))
        raise error

    def record(self, trial: optuna.Trial, trainer, started: float, **extra: Any) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in (self.spec.metric, "val/acc_best")}
        for key, value in {**metrics, "run": trainer.log_dir, "wall_s": round(time.perf_counter() - started, 1), **extra}.items():
            trial.set_user_attr(key, value)

    # -- results: straight from the study ---------------------------------------------------

    def rows(self) -> list[dict]:
        retried = {n for t in self.trials() for n in Retry.retry_history(t)}
        rows = []
        for t in self.trials(*DONE, TrialState.FAIL):
            if t.state == TrialState.FAIL and (t.user_attrs.get("stopped") or t.number in retried):
                continue  # stopped or killed, not broken: its retry carries it on
            keys = [self.spec.metric, "val/acc_best", "test/acc", "wall_s", "run", "best_checkpoint"]
            rows.append({"trial": t.number, "state": t.state.name.lower(), **t.params,
                         **{k: t.user_attrs.get(k) for k in dict.fromkeys(keys)}})
        return sorted(rows, key=lambda r: r.get("seed", 0)) if self.spec.seeds else rows

    def summarize(self, out) -> None:
        rows, csv_path = self.rows(), self.folder / "results.csv"
        summary: dict[str, Any] = {"sweep": self.spec.name, "csv": str(csv_path), "trials_done": len(self.trials(*DONE))}
        if rows:
            with open(csv_path, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        if self.trials(TrialState.COMPLETE):
            best = self.study.best_trial
            # A seed sweep is one setting: its statistics cover every seed. A search's best trial is one run.
            tests = [t.user_attrs["test/acc"] for t in (self.trials(TrialState.COMPLETE) if self.spec.seeds else [best])]
            stats = {"test_acc_mean": statistics.fmean(tests), "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else None,
                     "test_acc_min": min(tests), "test_acc_max": max(tests), "test_acc_n": len(tests)}
            command = shlex.join(["mnist-rnn", "test", "-c", f"{best.user_attrs['run']}/config.yaml", "--ckpt_path", best.user_attrs["best_checkpoint"]])
            summary.update(best_trial=best.number, best_params=best.params, best_value=best.value, **stats,
                           best_checkpoint=best.user_attrs["best_checkpoint"], test_command=command)
            what = f"{len(tests)} seeds" if self.spec.seeds else f"the best trial ({best.number})"
            if len(tests) > 1:
                print(f"\ntest/acc over {what}: {percent(stats['test_acc_mean'])} ± {percent(stats['test_acc_std'])}"
                      f" (mean ± sample std), min {percent(min(tests))}, max {percent(max(tests))}", file=out)
            else:
                print(f"\ntest/acc of {what}: {percent(tests[0])} (one run: a seed sweep of it gives mean ± std)", file=out)
            if not self.spec.seeds:
                print(f"best trial: {best.number}, {self.spec.metric} {best.value:.4f}: {best.params}", file=out)
            print(f"best checkpoint: {best.user_attrs['best_checkpoint']}\ntest it: {command}", file=out)
        if rows:
            print(f"results: {csv_path}  (tensorboard --logdir {self.folder}: HPARAMS compares the trials)", file=out)
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=1))


def suggest(trial: optuna.Trial, name: str, d: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)


def quiet_optuna() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry: stable here
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own line per trial


def worker(spec: Spec, folder: Path, storage_url: str, threads: Optional[int]) -> None:
    """One `study.optimize` loop; --parallel starts N of them as processes (the message of a failure is in the study)."""
    quiet_optuna()
    try:
        Sweep(spec, folder, storage_url, threads).work()
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    except MnistRnnError as err:
        sys.exit(err.exit_code)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"mnist-rnn: error: {message} (options: mnist-rnn sweep --help)", file=sys.stderr)
        raise SystemExit(2)


def sweep_main(argv: list[str]) -> None:
    parser = _OneLineParser(prog="mnist-rnn sweep", description="Run one fit config over several seeds, or an Optuna search over its options (docs/sweep.md).")
    parser.add_argument("-c", "--config", required=True, help="the sweep file, e.g. conf/sweeps/seeds.yaml")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in runs/<name>/ after a stop or a kill")
    parser.add_argument("--parallel", type=int, default=1, metavar="N", help="N worker processes, each with cores // N threads")
    parser.add_argument("--storage", metavar="URL", help="an Optuna RDB URL shared by several machines; default: SQLite in runs/<name>/")
    options = parser.parse_args(argv)
    if options.parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {options.parallel}")
    quiet_optuna()
    spec = load_spec(options.config)
    folder = check_spec(spec)
    database = folder / "sweep.db"
    if not options.storage and database.is_file() and not options.resume:
        raise SweepError(f"{folder}/ already holds the sweep {spec.name}; continue it with --resume, or give the"
                         " sweep file another name: (nothing there is overwritten)")
    if not options.storage and not database.is_file() and options.resume:
        raise SweepError(f"--resume: no sweep to continue in {folder}/; start it without --resume")
    url = options.storage or f"sqlite:///{database.resolve()}"  # absolute: a fit's config reading changes the folder
    folder.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // options.parallel) if options.parallel > 1 else None  # N trials share the cores
    sweep = Sweep(spec, folder, url, threads)
    done = sweep.prepare(resume_stopped=options.resume)
    at_once = f"{options.parallel} workers, {threads} thread(s) each" if threads else "one at a time"
    kind = f"{len(spec.seeds)} seeds" if spec.seeds else f"{spec.n_trials} trial(s), {spec.metric} {spec.direction[:3]}"
    print(f"sweep {spec.name}: {kind}; {done} done, {max(spec.n_trials - done, 0)} to run, {at_once};"
          f" runs in {folder}/ (tensorboard --logdir {folder})", flush=True)
    stopped = None
    try:
        if threads:
            stopped = run_workers(spec, folder, url, threads, options.parallel)
        else:
            sweep.work()
    except (TrainingStopped, KeyboardInterrupt) as err:
        stopped = getattr(err, "exit_code", 128 + signal.SIGINT)
    finally:
        sweep.summarize(sys.stdout)
    failed = [t.user_attrs["error"] for t in sweep.trials(TrialState.FAIL) if "error" in t.user_attrs]
    if stopped:
        extra = [*(["--parallel", str(options.parallel)] if threads else []), *(["--storage", options.storage] if options.storage else [])]
        command = shlex.join(["mnist-rnn", "sweep", "-c", str(spec.path), *extra, "--resume"])
        print(f"mnist-rnn: sweep {spec.name} stopped; resume with: {command}", file=sys.stderr)
        raise SystemExit(stopped)
    if failed:
        raise TrialFailed(failed[-1])


def run_workers(spec: Spec, folder: Path, url: str, threads: int, n: int) -> Optional[int]:
    """N worker processes on the study; returns the stop signal's exit status if they were stopped.
    Ctrl-C reaches them (one process group); a SIGTERM sent to the sweep alone is passed on."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch threads or CUDA state inherited
    workers = [context.Process(target=worker, args=(spec, folder, url, threads)) for _ in range(n)]
    for process in workers:
        process.start()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: [p.terminate() for p in workers])
    try:
        for process in workers:
            while process.is_alive():
                with contextlib.suppress(KeyboardInterrupt):
                    process.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    codes = {128 - p.exitcode if p.exitcode < 0 else p.exitcode for p in workers}  # -15: killed by SIGTERM
    return next((c for c in codes if c in (128 + signal.SIGINT, 128 + signal.SIGTERM)), None)

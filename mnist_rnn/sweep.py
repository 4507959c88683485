"""`mnist-rnn sweep -c SWEEP.yaml [--resume] [--parallel N] [--storage URL]`: trials on an Optuna study.

The sweep is an Optuna study (SQLite in runs/<name>/sweep.db, or --storage URL) and workers calling
`study.optimize` on it, Optuna's "easy parallelization": --parallel N starts N worker processes;
other machines join with the same --storage. A trial is an ordinary `mnist-rnn fit` (cli_main, in
the worker's process, in its own run folder), then `trainer.test` of its best checkpoint. Optuna's
heartbeat fails the trial of a killed worker and RetryHeartbeatStaleTrialCallback queues it again;
the retry resumes from the run's last.ckpt.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import multiprocessing
import shlex
import signal
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import optuna
from lightning.pytorch.callbacks import Callback
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mnist_rnn import hardware, resume, runs
from mnist_rnn.errors import MnistRnnError, TrainingStopped
from mnist_rnn.sweep_file import Spec, SweepError, check_spec, flag, load_spec, make_pruner

# A worker beats every 5 s while its trial runs; 6 missed beats in a row (30 s) mean it is gone.
# A --resume after a kill waits that long before it retries the killed trial.
HEARTBEAT_S, GRACE_S = 5, 30
SQLITE_TIMEOUT_S = 60  # how long a writer waits for SQLite's lock (a trial writes once per epoch and beat)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # the shell's status of a process stopped by a signal


class TrialFailed(MnistRnnError):
    """A trial's `fit` or `test` failed; the message names its log."""


class KeepTrainer(Callback):
    """Holds the trial's Trainer: a pruned fit ends in TrialPruned, and its run folder is still wanted."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer


@contextlib.contextmanager
def logged_to(log: Path):
    """A fit's or test's output into the run's log, line by line (a kill loses nothing written)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        logging.disable(logging.INFO)  # Lightning's info lines go to handlers bound to the terminal
        try:
            yield handle
        finally:
            logging.disable(logging.NOTSET)


def settings(params: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def suggest(trial: optuna.Trial, name: str, d: Any) -> Any:
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    suggest_range = trial.suggest_int if isinstance(d, IntDistribution) else trial.suggest_float
    return suggest_range(name, d.low, d.high, step=d.step, log=d.log)


class Sweep:
    def __init__(self, spec: Spec, folder: Path, storage_url: str, threads: Optional[int], worker: int = 0) -> None:
        self.spec, self.folder, self.threads = spec, folder, threads
        sqlite = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if storage_url.startswith("sqlite") else {}
        storage = RDBStorage(storage_url, engine_kwargs=sqlite, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                             heartbeat_stale_trial_callback=Retry(inherit_intermediate_values=True))
        # load_if_exists: workers and machines that start together all find the one study.
        self.study = optuna.create_study(storage=storage, study_name=spec.name, pruner=make_pruner(spec),
                                         direction=spec.direction, load_if_exists=True)
        # Worker i of a study holding k trials samples with sampler_seed + 1000 k + i: with one seed, parallel
        # workers and a resumed sweep would draw the same first settings again (seen on both).
        seed = None if spec.sampler_seed is None else spec.sampler_seed + 1000 * len(self.trials()) + worker
        sampler = optuna.samplers.RandomSampler if spec.sampler == "random" else optuna.samplers.TPESampler
        self.study.sampler = sampler(seed=seed)

    def trials(self, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def prepare(self, resume_stopped: bool) -> int:
        """Keep the sweep file in a new study, or check it against the stored one; queue the seeds and, on
        --resume, the trials a Ctrl-C or SIGTERM stopped. Returns the number of finished trials."""
        stored, mine = self.study.user_attrs.get("spec"), self.spec.as_dict()
        if stored not in (None, mine):
            raise SweepError(f"{self.spec.path} differs from the sweep {self.spec.name} stored in the study"
                             f" ({', '.join(k for k in mine if stored.get(k) != mine[k])} changed); give it another name:")
        self.study.set_user_attr("spec", mine)
        retried = {n for t in self.trials() for n in Retry.retry_history(t)}
        for trial in self.trials(TrialState.FAIL) if resume_stopped else ():
            if trial.user_attrs.get("stopped") and trial.number not in retried:
                Retry(inherit_intermediate_values=True)(self.study, trial)  # Optuna's retry, as for a killed trial
        if self.spec.seeds and (stored is None or resume_stopped):
            taken = {t.params.get("seed") for t in self.trials(*DONE, TrialState.WAITING, TrialState.RUNNING)}
            for seed in (s for s in self.spec.seeds if s not in taken):  # a first start, or a seed that failed
                self.study.enqueue_trial({"seed": seed})
        return len(self.trials(*DONE))

    def enough(self) -> bool:
        """MaxTrialsCallback's rule, counting the trials under way too (so that N workers stop at n_trials,
        not n_trials + N - 1); a seed sweep's trials come from its queue only."""
        under_way = len(self.trials(*DONE, TrialState.RUNNING))
        return under_way >= self.spec.n_trials or bool(self.spec.seeds and not self.trials(TrialState.WAITING))

    def stop_when_enough(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.enough():
            study.stop()

    def work(self) -> None:
        """Trials until the study has enough; then wait for other workers' (a dead one's is retried here)."""
        waiting = False
        while True:
            fail_stale_trials(self.study)
            if not self.enough():
                self.study.optimize(self.objective, callbacks=[self.stop_when_enough], catch=())
            running = [str(t.number) for t in self.trials(TrialState.RUNNING)]
            if not running:
                return
            if not waiting:
                print(f"waiting for trial(s) {', '.join(running)}: running elsewhere, or killed (retried after"
                      f" {GRACE_S} s without a heartbeat)", flush=True)
            waiting = True
            time.sleep(HEARTBEAT_S)

    def objective(self, trial: optuna.Trial) -> float:
        spec, started, kept = self.spec, time.perf_counter(), KeepTrainer()
        params = {name: suggest(trial, name, d) for name, d in spec.params.items()}
        seed = trial.suggest_categorical("seed", spec.seeds) if spec.seeds else None
        origin = Retry.retried_trial_number(next(t for t in self.trials() if t.number == trial.number))
        run = self.folder / (f"seed_{seed}" if spec.seeds else f"trial_{trial.number if origin is None else origin:03d}")
        again = f" (trial {origin} again)" if origin is not None else ""
        print(f"trial {trial.number}{again}: {settings(params) or f'seed {seed}'}", flush=True)
        try:
            cli = self.fit(trial, run, params, seed, kept)
        except optuna.TrialPruned:
            self.record(trial, kept.trainer, started)
            print(f"trial {trial.number}: pruned after epoch {kept.trainer.current_epoch + 1}", flush=True)
            raise
        except (TrainingStopped, KeyboardInterrupt):
            trial.set_user_attr("stopped", True)  # not broken: --resume queues it again
            raise
        best = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
        if spec.metric not in cli.trainer.callback_metrics or not best:
            error = f"trial {trial.number} logged no {spec.metric} or saved no checkpoint to test (log: {run / 'fit.log'})"
            trial.set_user_attr("error", error)
            raise TrialFailed(error)
        value = float(cli.trainer.callback_metrics[spec.metric])
        self.record(trial, cli.trainer, started, best_checkpoint=best)  # before the test replaces the metrics
        with logged_to(run / "test.log"):  # the exact score of `mnist-rnn test -c <run>/config.yaml --ckpt_path <best>`
            test_acc = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]["test/acc"]
        wall_s = round(time.perf_counter() - started, 1)
        trial.set_user_attr("test/acc", test_acc), trial.set_user_attr("wall_s", wall_s)
        print(f"trial {trial.number}: {spec.metric} {value:.4f}  test/acc {test_acc:.2%}  ({wall_s:.0f} s)"
              f"  {cli.trainer.log_dir}", flush=True)
        return value

    def fit(self, trial: optuna.Trial, run: Path, params: dict, seed: Optional[int], kept: KeepTrainer):
        """The trial's `fit`, resumed from last.ckpt when an earlier attempt of it left one."""
        from mnist_rnn.cli import cli_main

        args = ["fit", *self.spec.fit_args(), *(flag(k, v) for k, v in params.items())]
        args += [flag("seed_everything", seed)] if seed is not None else []
        args += [flag("threads", self.threads)] if self.threads else []
        args += [flag("trainer.devices", 1)]  # `auto` would be every GPU, under DDP (see check_spec)
        args += [flag("trainer.logger.init_args.save_dir", str(self.folder)), flag("trainer.logger.init_args.name", run.name)]
        args += ["--ckpt_path", resume.LAST] if runs.newest_checkpoint(run) is not None else []
        # Persistent callbacks (LightningCLI's trainer_defaults), not in config.yaml: the run's config.yaml
        # reruns the trial as a plain fit.
        callbacks = (kept, *([PyTorchLightningPruningCallback(trial, self.spec.metric)] if self.spec.is_search else []))
        with logged_to(run / "fit.log") as log:
            log.write(f"$ {shlex.join(['mnist-rnn', *args])}\n")
            try:
                return cli_main(args, callbacks=callbacks)
            except SystemExit as exit:  # a value the fit parser refused, printed to the log
                error = f"fit exited with status {exit.code}"
            except MnistRnnError as err:
                if isinstance(err, TrainingStopped):
                    raise
                error = str(err)
        trial.set_user_attr("error", f"trial {trial.number} failed: {error} (log: {run / 'fit.log'})")
        raise TrialFailed(trial.user_attrs["error"])

    def record(self, trial: optuna.Trial, trainer, started: float, **extra: Any) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in (self.spec.metric, "val/acc_best")}
        wall_s = round(time.perf_counter() - started, 1)
        for key, value in {**metrics, "run": trainer.log_dir, "wall_s": wall_s, **extra}.items():
            trial.set_user_attr(key, value)

    def summarize(self) -> None:
        """The results, read from the study: results.csv (a row per trial), summary.json, the best trial."""
        retried = {n for t in self.trials() for n in Retry.retry_history(t)}
        keys = dict.fromkeys([self.spec.metric, "val/acc_best", "test/acc", "wall_s", "run", "best_checkpoint"])
        rows = [{"trial": t.number, "state": t.state.name.lower(), **t.params, **{k: t.user_attrs.get(k) for k in keys}}
                for t in sorted(self.trials(*DONE, TrialState.FAIL), key=lambda t: t.params.get("seed", 0))
                if not (t.state == TrialState.FAIL and (t.user_attrs.get("stopped") or t.number in retried))]
        summary: dict[str, Any] = {"sweep": self.spec.name, "csv": str(self.folder / "results.csv"),
                                   "trials_done": len(self.trials(*DONE))}
        if rows:
            with open(self.folder / "results.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader(), writer.writerows(rows)
        if self.trials(TrialState.COMPLETE):
            best = self.study.best_trial
            # A seed sweep is one setting: its statistics cover every seed. A search's best trial is one run.
            tests = [t.user_attrs["test/acc"] for t in (self.trials(TrialState.COMPLETE) if self.spec.seeds else [best])]
            std = statistics.stdev(tests) if len(tests) > 1 else None
            checkpoint = best.user_attrs["best_checkpoint"]
            command = shlex.join(["mnist-rnn", "test", "-c", f"{best.user_attrs['run']}/config.yaml", "--ckpt_path", checkpoint])
            summary.update(best_trial=best.number, best_params=best.params, best_value=best.value,
                           test_acc_mean=statistics.fmean(tests), test_acc_std=std, test_acc_min=min(tests),
                           test_acc_max=max(tests), test_acc_n=len(tests), best_checkpoint=checkpoint, test_command=command)
            if std is not None:
                print(f"\ntest/acc over {len(tests)} seeds: {statistics.fmean(tests):.2%} ± {std:.2%} (mean ± sample std),"
                      f" min {min(tests):.2%}, max {max(tests):.2%}")
            else:
                what = "1 seed" if self.spec.seeds else f"the best trial ({best.number})"
                print(f"\ntest/acc of {what}: {tests[0]:.2%} (one run: a seed sweep of its settings gives mean ± std)")
            if not self.spec.seeds:
                print(f"best trial: {best.number}, {self.spec.metric} {best.value:.4f}: {settings(best.params)}")
            print(f"best checkpoint: {checkpoint}\ntest it: {command}")
        if rows:
            print(f"results: {self.folder / 'results.csv'}  (tensorboard --logdir {self.folder}: HPARAMS compares the trials)")
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=1))


def quiet_optuna() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat and retry helpers
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own line per trial


def worker(spec: Spec, folder: Path, storage_url: str, threads: Optional[int], index: int) -> None:
    """One worker process of --parallel; a failed trial's message is kept in the study for the sweep to show."""
    quiet_optuna()
    try:
        Sweep(spec, folder, storage_url, threads, index).work()
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    except MnistRnnError as err:
        sys.exit(err.exit_code)


def run_workers(spec: Spec, folder: Path, url: str, threads: int, n: int) -> list[int]:
    """N worker processes on the study; returns their exit statuses. Ctrl-C reaches
    them all (one process group); a SIGTERM sent to the sweep alone is passed on."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no torch threads or CUDA state inherited
    workers = [context.Process(target=worker, args=(spec, folder, url, threads, i)) for i in range(n)]
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
    return [128 - p.exitcode if p.exitcode < 0 else p.exitcode for p in workers]  # -15: ended by SIGTERM


def run(options: argparse.Namespace) -> None:
    """`mnist-rnn sweep` with its parsed options (mnist_rnn/commands.py)."""
    if options.parallel < 1:
        raise SweepError(f"--parallel must be at least 1, got {options.parallel}")
    quiet_optuna()
    spec = load_spec(options.config)
    folder = check_spec(spec)
    database = folder / "sweep.db"
    if not options.storage and database.is_file() != options.resume:
        raise SweepError(f"{folder}/ already holds the sweep {spec.name}; continue it with --resume, or give the sweep file"
                         " another name: (nothing there is overwritten)" if database.is_file() else
                         f"--resume: no sweep to continue in {folder}/; start it without --resume")
    url = options.storage or f"sqlite:///{database.resolve()}"  # absolute: jsonargparse changes folder reading a config
    folder.mkdir(parents=True, exist_ok=True)
    threads = max(1, hardware.cores() // options.parallel) if options.parallel > 1 else None  # N trials share the cores
    sweep = Sweep(spec, folder, url, threads)
    done = sweep.prepare(resume_stopped=options.resume)
    kind = f"{len(spec.seeds)} seeds" if spec.seeds else f"{spec.n_trials} trial(s), {spec.metric} {spec.direction[:3]}"
    print(f"sweep {spec.name}: {kind}; {done} done, {max(spec.n_trials - done, 0)} to run, "
          f"{f'{options.parallel} workers, {threads} thread(s) each' if threads else 'one at a time'};"
          f" runs in {folder}/ (tensorboard --logdir {folder})", flush=True)
    codes: list[int] = []
    try:
        codes = run_workers(spec, folder, url, threads, options.parallel) if threads else sweep.work() or []
    except (TrainingStopped, KeyboardInterrupt) as err:
        codes = [getattr(err, "exit_code", 128 + signal.SIGINT)]
    finally:
        sweep.summarize()
    stopped = next((code for code in codes if code in STOPPED), None)
    if stopped:
        extra = ["--parallel", str(options.parallel)] if threads else []
        extra += ["--storage", options.storage] if options.storage else []
        command = shlex.join(["mnist-rnn", "sweep", "-c", str(spec.path), *extra, "--resume"])
        print(f"mnist-rnn: sweep {spec.name} stopped; resume with: {command}", file=sys.stderr)
        raise SystemExit(stopped)
    if any(codes):  # a worker's trial failed: its message is in the study
        raise TrialFailed(next((t.user_attrs["error"] for t in sweep.trials(TrialState.FAIL)[::-1] if "error" in t.user_attrs),
                               f"a worker exited with status {max(codes)}"))

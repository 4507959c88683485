"""`mnist-rnn sweep`: workers calling `study.optimize` on one Optuna study (runs/<name>/sweep.db, or --storage URL shared by
machines; --parallel N processes). A trial is a `fit` in its worker's process, then `trainer.test` of its best checkpoint; a
killed trial loses its heartbeat and Optuna's retry queues it again (a stopped one at once), to resume from its last.ckpt."""

import contextlib
import csv
import itertools
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
from lightning.pytorch.callbacks import LambdaCallback
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from mnist_rnn.commands.sweep_file import Spec, SweepError, check_spec, flag, load_spec, make_pruner, need
from mnist_rnn.commands.sweep_storage import one_at_a_time, open_storage, parse
from mnist_rnn.errors import MnistRnnError, TrainingStopped
from mnist_rnn.run import folders as runs
from mnist_rnn.run import hardware, resume

# A worker beats every 5 s while its trial runs; 30 s without a beat mean it is gone (a --resume after a kill waits that long).
HEARTBEAT_S, GRACE_S = 5, 30
SQLITE_TIMEOUT_S = 60  # how long a writer waits for SQLite's lock (a trial writes once per epoch and beat)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
STOPPED = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # the shell's status of a process stopped by a signal
with warnings.catch_warnings():  # Optuna's retry helper is experimental (quiet_optuna quiets the others for the command)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)  # its static methods read a trial's retries
AGAIN = "the finished trials are kept; free space, then resume the sweep (--resume)"  # the full-disk line's advice


def quiet_optuna() -> None:
    """Optuna quiet for the sweep command and its spawned workers, where they start (never at import)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat and retry helpers
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own line per trial


@contextlib.contextmanager
def logged_to(log: Path):  # a fit's or test's output into the run's log, line by line (a kill loses nothing written)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        logging.disable(logging.INFO)  # Lightning's info lines go to handlers bound to the terminal
        try:
            yield handle
        finally:
            logging.disable(logging.NOTSET)


def settings(params: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class Sweep:
    def __init__(self, spec: Spec, folder: Path, url: str, threads: Optional[int], worker: int = 0) -> None:
        self.spec, self.folder, self.threads = spec, folder, threads
        storage = open_storage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {},
                               heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, heartbeat_stale_trial_callback=RETRY)
        self.study = optuna.create_study(storage=storage, study_name=spec.name, pruner=make_pruner(spec),
                                         direction=spec.direction, load_if_exists=True)  # workers starting together find one study
        # Worker i of a study of k trials: sampler_seed + 1000 k + i (one seed gave parallel workers and resumes the same first settings).
        seed = None if spec.sampler_seed is None else spec.sampler_seed + 1000 * len(self.trials()) + worker
        self.study.sampler = (optuna.samplers.RandomSampler if spec.sampler == "random" else optuna.samplers.TPESampler)(seed=seed)

    def trials(self, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def prepare(self, resume: bool) -> int:  # the number of trials finished
        stored, mine = self.study.user_attrs.get("spec"), self.spec.as_dict()
        if stored not in (None, mine):
            raise SweepError(f"{self.spec.path} differs from the sweep {self.spec.name} stored in the study"
                             f" ({', '.join(k for k in mine if stored.get(k) != mine[k])} changed); give it another name:")
        self.study.set_user_attr("spec", mine)
        # An enqueued trial's seed is in its fixed_params until it starts (a kill can leave it waiting).
        queued = self.trials(*DONE, TrialState.WAITING, TrialState.RUNNING)
        taken = {t.system_attrs.get("fixed_params", t.params).get("seed") for t in queued}
        for seed in (self.spec.seeds or []) if stored is None or resume else ():
            if seed not in taken:
                self.study.enqueue_trial({"seed": seed})
        return len(self.trials(*DONE))

    def enough(self) -> bool:
        """MaxTrialsCallback's rule counting running trials (N workers stop at n_trials, not n_trials + N - 1), or an empty seed queue."""
        under_way = len(self.trials(*DONE, TrialState.RUNNING))
        return under_way >= self.spec.n_trials or bool(self.spec.seeds and not self.trials(TrialState.WAITING))

    def work(self) -> None:  # trials until the study has enough, then a wait for other workers' (a dead one's is retried here)
        for waited in itertools.count():
            fail_stale_trials(self.study)
            if not self.enough():
                self.study.optimize(self.objective, callbacks=[lambda study, _: self.enough() and study.stop()], catch=())
            running = ", ".join(str(t.number) for t in self.trials(TrialState.RUNNING))
            if not running:
                return
            if not waited:
                print(f"waiting for trial(s) {running}: running elsewhere, or killed (retried after {GRACE_S} s"
                      " without a heartbeat)", flush=True)
            time.sleep(HEARTBEAT_S)

    def objective(self, trial: optuna.Trial) -> float:
        from mnist_rnn.commands.cli import cli_main

        spec, started = self.spec, time.perf_counter()
        params = {name: getattr(trial, f"suggest_{kind}")(name, **keywords) for name, (kind, keywords) in spec.params.items()}
        seed = trial.suggest_categorical("seed", spec.seeds) if spec.seeds else None
        origin = RETRY.retried_trial_number(self.trials()[trial.number])
        run = self.folder / (f"seed_{seed}" if spec.seeds else f"trial_{trial.number if origin is None else origin:03d}")
        again = "" if origin is None else f" (trial {origin} again)"
        print(f"trial {trial.number}{again}: {settings(params) or f'seed {seed}'}", flush=True)
        # devices: `auto` would be every GPU, under DDP (see check_spec); --ckpt_path: an earlier attempt's last.ckpt.
        fixed = {"trainer.devices": 1, "trainer.logger.init_args.save_dir": str(self.folder), "trainer.logger.init_args.name": run.name,
                 "seed_everything": seed, "threads": self.threads}  # None (no seed, one trial at a time): not passed
        args = ["fit", *spec.fit_args(), *(flag(k, v) for k, v in params.items()), *(flag(k, v) for k, v in fixed.items() if v is not None),
                *(["--ckpt_path", resume.LAST] if runs.newest_checkpoint(run) is not None else [])]
        # Persistent callbacks (LightningCLI's trainer_defaults), not in config.yaml: that reruns the trial as a plain fit.
        # The metrics are recorded at every validation, before the pruner's verdict, and for a retry if a kill comes next.
        callbacks = (LambdaCallback(on_validation_end=lambda trainer, *_: self.record(trial, trainer, started)),
                     *([PyTorchLightningPruningCallback(trial, spec.metric)] if spec.params else []))
        try:
            with logged_to(run / "fit.log") as log:
                log.write(f"$ {shlex.join(['mnist-rnn', *args])}\n")
                cli = cli_main(args, callbacks=callbacks)
            self.record(trial, cli.trainer, started, best_checkpoint=getattr(cli.trainer.checkpoint_callback, "best_model_path", None))
            # A retry of a trial killed in its test fits nothing more: its metric and checkpoint are the attempt's before.
            value, best = trial.user_attrs.get(spec.metric), trial.user_attrs.get("best_checkpoint")
            if value is None or not best:
                raise MnistRnnError(f"it logged no {spec.metric} or saved no checkpoint to test")
            with logged_to(run / "test.log"):  # the exact score of `mnist-rnn test -c <run>/config.yaml --ckpt_path <best>`
                test_acc = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False)[0]["test/acc"]
        except optuna.TrialPruned:
            print(f"trial {trial.number}: pruned after epoch {self.trials()[trial.number].last_step + 1}", flush=True)
            raise
        except (TrainingStopped, KeyboardInterrupt):
            RETRY(self.study, self.trials()[trial.number])  # not broken: queued again, as a killed trial is
            raise
        except (SystemExit, MnistRnnError) as err:  # SystemExit: a value the fit parser refused, printed to the log
            error = f"fit exited with status {err.code}" if isinstance(err, SystemExit) else err
            raise MnistRnnError(f"trial {trial.number} failed: {error} (logs: {run}/fit.log, test.log)") from None
        wall_s = self.record(trial, cli.trainer, started, **{"test/acc": test_acc})
        print(f"trial {trial.number}: {spec.metric} {value:.4f}  test/acc {test_acc:.2%}  ({wall_s:.0f} s)  {cli.trainer.log_dir}",
              flush=True)
        return value

    def record(self, trial: optuna.Trial, trainer, started: float, **extra: Any) -> float:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in (self.spec.metric, "val/acc_best")}
        wall_s = round(time.perf_counter() - started, 1)
        for key, value in {**metrics, "run": trainer.log_dir, "wall_s": wall_s, **extra}.items():
            if value not in (None, ""):  # a fit that trained no more (its test was killed) keeps the values before
                trial.set_user_attr(key, value)
        return wall_s

    def summarize(self) -> None:  # results.csv, summary.json and the lines about the best trial, read from the study
        retried = {n for t in self.trials() for n in RETRY.retry_history(t)}
        keys = dict.fromkeys([self.spec.metric, "val/acc_best", "test/acc", "wall_s", "run", "best_checkpoint"])
        rows = [{"trial": t.number, "state": t.state.name.lower(), **t.params, **{k: t.user_attrs.get(k) for k in keys}}
                for t in sorted(self.trials(*DONE, TrialState.FAIL), key=lambda t: t.params.get("seed", 0)) if t.number not in retried]
        csv_path, complete = self.folder / "results.csv", self.trials(TrialState.COMPLETE)
        summary: dict[str, Any] = {"sweep": self.spec.name, "csv": str(csv_path), "trials_done": len(self.trials(*DONE))}
        if complete:
            best = self.study.best_trial
            # A seed sweep is one setting: its statistics cover every seed. A search's best trial is one run.
            tests = [t.user_attrs["test/acc"] for t in (complete if self.spec.seeds else [best])]
            mean, std = statistics.fmean(tests), statistics.stdev(tests) if len(tests) > 1 else None
            checkpoint = best.user_attrs["best_checkpoint"]
            command = shlex.join(["mnist-rnn", "test", "-c", f"{best.user_attrs['run']}/config.yaml", "--ckpt_path", checkpoint])
            summary.update(best_trial=best.number, best_params=best.params, best_value=best.value, test_acc_mean=mean, test_acc_std=std,
                           test_acc_min=min(tests), test_acc_max=max(tests), test_acc_n=len(tests), best_checkpoint=checkpoint,
                           test_command=command)
            of = f"over {len(tests)} seed{'s' * (len(tests) > 1)}" if self.spec.seeds else f"of the best trial ({best.number})"
            spread = f" ± {std:.2%} (mean ± sample std), min {min(tests):.2%}, max {max(tests):.2%}" if std is not None else ""
            chosen = "" if self.spec.seeds else f"\nbest trial: {best.number}, {self.spec.metric} {best.value:.4f}: {settings(best.params)}"
            print(f"\ntest/acc {of}: {mean:.2%}{spread}{chosen}\nbest checkpoint: {checkpoint}\ntest it: {command}")
        # Both files whole or not at all (the ones before stay).
        if rows:
            with runs.staged(csv_path, then=AGAIN) as staging, open(staging, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            print(f"results: {csv_path}  (tensorboard --logdir {self.folder}: HPARAMS compares the trials)")
        with runs.staged(self.folder / "summary.json", then=AGAIN) as staging:
            staging.write_text(json.dumps(summary, indent=1))


def worker(spec: Spec, folder: Path, url: str, threads: Optional[int], index: int) -> None:
    """One worker process of --parallel; its error in one line, as the sweep's own."""
    quiet_optuna()
    try:
        with runs.reporting_full_disk(url.removeprefix("sqlite:///"), then=AGAIN):
            Sweep(spec, folder, url, threads, index).work()
    except (TrainingStopped, KeyboardInterrupt) as err:
        sys.exit(getattr(err, "exit_code", 128 + signal.SIGINT))
    except MnistRnnError as err:
        print(f"mnist-rnn: error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)


def run_workers(spec: Spec, folder: Path, url: str, threads: int, n: int) -> list[int]:
    """N worker processes on the study (a SIGTERM sent to the sweep alone is passed on); returns their exit statuses."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no torch threads or CUDA state inherited
    workers = [context.Process(target=worker, args=(spec, folder, url, threads, i)) for i in range(n)]
    for process in workers:
        process.start()
    # Ctrl-C reaches the workers themselves (one process group); this process waits for them to save and stop.
    previous = [signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in workers]), signal.signal(signal.SIGINT, signal.SIG_IGN)]
    for process in workers:
        process.join()
    signal.signal(signal.SIGTERM, previous[0]), signal.signal(signal.SIGINT, previous[1])
    return [128 - p.exitcode if p.exitcode < 0 else p.exitcode for p in workers]  # -15: ended by SIGTERM


def run(config: str, resume: bool, parallel: int, storage: Optional[str]) -> None:
    """`mnist-rnn sweep`, its options checked by their types (own_commands.sweep)."""
    quiet_optuna()
    spec = load_spec(config)
    folder = check_spec(spec)
    database = folder / "sweep.db"
    need(storage or database.is_file() == resume, f"{folder}/ already holds the sweep {spec.name}; continue it with"
         " --resume, or give the sweep file another name: (nothing there is overwritten)" if database.is_file() else
         f"--resume: no sweep to continue in {folder}/; start it without --resume")
    url = storage or f"sqlite:///{database.resolve()}"  # absolute: jsonargparse changes folder reading a config
    parse(url)  # a URL without its driver: refused before anything is made
    folder.mkdir(parents=True, exist_ok=True)
    threads = max(1, hardware.cores() // parallel) if parallel > 1 else None  # N trials share the cores
    with runs.reporting_full_disk(url.removeprefix("sqlite:///"), then=AGAIN):
        with one_at_a_time(url):  # workers started together: one at a time makes the tables and the study, or joins it
            sweep = Sweep(spec, folder, url, threads)
            done = sweep.prepare(resume=resume)
        kind = f"{len(spec.seeds)} seeds" if spec.seeds else f"{spec.n_trials} trial(s), {spec.metric} {spec.direction[:3]}"
        print(f"sweep {spec.name}: {kind}; {done} done, {max(spec.n_trials - done, 0)} to run, "
              f"{f'{parallel} workers, {threads} thread(s) each' if threads else 'one at a time'};"
              f" runs in {folder}/ (tensorboard --logdir {folder})", flush=True)
        try:
            codes = run_workers(spec, folder, url, threads, parallel) if threads else sweep.work() or []
        except (TrainingStopped, KeyboardInterrupt) as err:
            codes = [getattr(err, "exit_code", 128 + signal.SIGINT)]
        finally:
            sweep.summarize()
    stopped = next((code for code in codes if code in STOPPED), None)
    if stopped:
        again = [*(["--parallel", str(parallel)] if threads else []), *(["--storage", storage] if storage else [])]
        command = shlex.join(["mnist-rnn", "sweep", "-c", str(spec.path), *again, "--resume"])
        print(f"mnist-rnn: sweep {spec.name} stopped; resume with: {command}", file=sys.stderr)
    if any(codes):
        raise SystemExit(stopped or max(codes))  # a failed worker printed its own error

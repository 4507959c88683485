"""The kill soak (issue 23): a fit SIGKILLed at R random moments, resumed with `--ckpt_path last` after
each, ends exactly as the same fit never interrupted.

`soak(...)` runs the fit of `config(...)` twice in folders of its own: once uninterrupted, and once
killed R times. Kill i aims at the i-th R-th of the run's steps and is drawn from
`random.Random(seed)`, of one of four kinds:

- `anytime`: from outside (this process), a random time after the attempt was started: start-up,
  data loading, training, validation, checkpoint writes, the end of fit;
- `train`, `validation`, `save`: a random few milliseconds after the run enters that phase at or
  after a random step (`tests.interrupts.KillAt`, a timer thread of the run itself, so that the kill
  lands inside a validation or a checkpoint write; `save` also hits the staging file, its rename
  and the flush of the step's scalars that follows).

Whatever its kind, a kill that has not landed by the end of the attempt lands then; every kill but the
last already as the run's last validation ends, before the checkpoints written after it (KillAt's
before_last_saves), so that each leaves the next attempt a run to resume and the next kill something to
land in. A kill between the files of one save (the best checkpoint, then last.ckpt) is a chosen kill of
the default suite.

After each kill it reruns the command with `--ckpt_path last` (without it while there is no
checkpoint yet: a kill before the first one means starting again). At the end the final last.ckpt
must equal the uninterrupted run's (`torch.equal` on every weight and every optimizer tensor, the
schedule and the loop counters), and every TensorBoard scalar's points must be the uninterrupted
run's, in the same order, with at most some left out (none repeated, none going back, no other
value): only those of a checkpoint's own step that a resume started after, never a validation's.
The points left out are reported.

Replay a failure with `SOAK_SEED=<the printed seed>`. Attempts run as `python -m mnist_rnn`
subprocesses in a session of their own (`launcher="subprocess"`; a kill takes the whole group,
every DDP rank), or, for the default suite, in a forked copy of the test process, which has
mnist_rnn imported already (`launcher="fork"`: the same `mnist_rnn.commands.dispatch.main` that `python -m
mnist_rnn` runs, without its 8-20 s of imports per attempt on a busy 2-core machine).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_rnn.run.checkpoints import read_checkpoint
from tests.conftest import TINY, subprocess_env

KINDS = ("anytime", "train", "validation", "save")
NAME = "soak"  # runs/soak/


def config(
    epochs: int, batches: int, interval: Optional[str] = "0:00:00.1", every_n_train_steps: int = 0, val_check_interval: float = 0.5,
) -> str:  # fmt: skip
    """The soak's fit on top of conf/tiny.yaml: every step logged, a validation every half epoch,
    and last.ckpt written every `interval` of training (TimedCheckpoint, as in conf/default.yaml
    but more often; None: not) and, with every_n_train_steps, also by a user's own
    ModelCheckpoint every that many steps, besides the default list's best and epoch-end
    checkpoints; two layers with dropout, so that the random generators matter."""
    callbacks = ""
    if interval is not None:
        callbacks += f"""
    - class_path: mnist_rnn.run.checkpoints.TimedCheckpoint
      init_args: {{filename: last, train_time_interval: "{interval}", enable_version_counter: false}}"""
    if every_n_train_steps:
        callbacks += f"""
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{filename: last, every_n_train_steps: {every_n_train_steps}, enable_version_counter: false}}"""
    if callbacks:
        callbacks = "\n  callbacks+:" + callbacks
    return f"""
trainer:
  max_epochs: {epochs}
  limit_train_batches: {batches}
  val_check_interval: {val_check_interval}
  log_every_n_steps: 1
  logger: {{init_args: {{name: soak}}}}{callbacks}
model:
  num_layers: 2
  dropout: 0.3
"""


@dataclass
class Kill:
    kind: str
    step: int  # at or after this training step
    delay: float  # seconds after the phase is entered (anytime: after the attempt started)
    signum: int = signal.SIGKILL  # another (SIGTERM) asks StopOnSignal to stop
    entry: int = 1  # the entry-th time the run enters the phase at or after step

    def __str__(self) -> str:
        sent = "" if self.signum == signal.SIGKILL else f"{signal.Signals(self.signum).name} "
        if self.kind == "anytime":
            return f"{sent}anytime, {self.delay:.3f} s after the start"
        nth = "first" if self.entry == 1 else f"entry {self.entry} of the"
        return f"{sent}{self.delay * 1000:.0f} ms into the {nth} {self.kind} at or after step {self.step}"


@dataclass
class Report:
    seed: int
    kills: list[str] = field(default_factory=list)  # what happened to each
    resumed_from: list[int] = field(default_factory=list)  # the checkpoint step of each resumed attempt
    restarts: int = 0  # attempts started again because no checkpoint existed yet
    torn_writes: int = 0  # kills that left a staging file behind (killed inside a checkpoint write)
    points: int = 0  # scalar points of the uninterrupted run
    missing: dict[str, list[int]] = field(default_factory=dict)  # tag: steps the soaked run lacks
    seconds: float = 0.0

    def summary(self) -> str:
        lost = sum(len(s) for s in self.missing.values())
        return (
            f"soak seed {self.seed}: {len(self.kills)} kills survived in {self.seconds:.0f} s, resumed from steps"
            f" {self.resumed_from}, {self.restarts} restarts without a checkpoint, {self.torn_writes} kills inside"
            f" a checkpoint write; {lost} of {self.points} scalar points missing {self.missing}"
        )


_FORK = multiprocessing.get_context("fork")


def _attempt_in_fork(cwd: str, args: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # not pytest's capture
    os.chdir(cwd)
    sys.argv = ["mnist-rnn", *args]
    from mnist_rnn.commands import main

    main(args)


class Attempt:
    """One `mnist-rnn fit` of the soak, forked or as a subprocess; `kill()` is SIGKILL from outside."""

    def __init__(self, launcher: str, cwd: Path, args: list[str], log: Path) -> None:
        self.log = log
        self.started = time.time()
        if launcher == "fork":
            self.process = _FORK.Process(target=_attempt_in_fork, args=(str(cwd), args, str(log)))
            self.process.start()
        else:
            with log.open("wb") as out:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "mnist_rnn", *args], cwd=cwd, env=subprocess_env(),
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip

    def wait(self, timeout: float) -> Optional[int]:
        """The exit status (negative: killed by that signal), or None if still running after timeout."""
        if isinstance(self.process, subprocess.Popen):
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self) -> None:
        if isinstance(self.process, subprocess.Popen):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # every rank
            except ProcessLookupError:
                pass
        else:
            self.process.kill()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def fit_args(
    config_path: Path, markers: Path, kill: Optional[Kill], extra: tuple[str, ...], group: bool, before_last_saves: bool = False,
) -> list[str]:  # fmt: skip
    killer = ["--trainer.callbacks+=tests.interrupts.KillAt", f"--trainer.callbacks.folder={markers}"]
    if kill is not None:
        killer += [f"--trainer.callbacks.phase={kill.kind}", f"--trainer.callbacks.step={kill.step}",
                   f"--trainer.callbacks.delay={kill.delay}", f"--trainer.callbacks.signum={int(kill.signum)}",
                   f"--trainer.callbacks.entry={kill.entry}", f"--trainer.callbacks.before_last_saves={before_last_saves}"]  # fmt: skip
    if group:
        killer.append("--trainer.callbacks.group=true")
    return ["fit", "-c", TINY, "-c", str(config_path), *extra, *killer]


def checkpoints_of(work: Path) -> list[Path]:
    return sorted((work / "runs" / NAME).glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime_ns)


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder as TensorBoard shows it (what a resume purged is hidden)."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_state(got: Any, expected: Any, where: str) -> None:
    """Equal nested checkpoint content: tensors bit for bit (torch.equal), everything else by ==."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.dtype == expected.dtype and torch.equal(got, expected), where
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got, key=str) == sorted(expected, key=str), where
        for key, value in expected.items():
            assert_same_state(got[key], value, f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


RESUMING = re.compile(r"^resuming runs/soak/version_(\d+) from (\S+) \(epoch \d+, after step (\d+)\)$", re.M)


@dataclass
class Reference:
    """The uninterrupted run, and its pace for the timing of kills from outside."""

    folder: Path  # its cwd: runs/soak/version_0/ inside
    startup: float  # seconds from the start of the command to its first training step
    per_step: float  # seconds a step, validations and checkpoints included


def uninterrupted(
    folder: Path, epochs: int = 3, batches: int = 40, extra: tuple[str, ...] = (), launcher: str = "fork", timeout: float = 300,
    **settings: Any,
) -> Reference:  # fmt: skip
    """The soak's fit run once, never interrupted, in folder (settings: config()'s)."""
    folder.mkdir(parents=True)
    config_path = folder / f"{NAME}.yaml"
    config_path.write_text(config(epochs, batches, **settings))
    markers = folder / "markers"
    group = launcher == "subprocess"
    run = Attempt(launcher, folder, fit_args(config_path, markers, None, extra, group), folder / "fit.log")
    status = run.wait(timeout)
    if status is None:
        run.kill()  # a forked fit left running would keep pytest from exiting
    assert status == 0, f"the uninterrupted fit: exit status {status} (None: still running after {timeout} s)\n{run.text()[-3000:]}"
    train_start, train_end = (float((markers / m).read_text()) for m in ("train_start", "train_end"))
    return Reference(folder, train_start - run.started, (train_end - train_start) / (epochs * batches))


def soak(
    tmp_path: Path, kills: int, seed: Optional[int] = None, epochs: int = 3, batches: int = 40,
    extra: tuple[str, ...] = (), launcher: str = "fork", timeout: float = 300,  # a DDP attempt: ~70 s here
    interval: Optional[str] = "0:00:00.1", plan: Optional[list[Kill]] = None, every_n_train_steps: int = 0, val_check_interval: float = 0.5,
) -> Report:  # fmt: skip
    """Run the soak (see the module's docstring); assertion errors name the seed and the kill.

    plan: these kills (None: a random one) instead of `kills` random ones; interval, every_n_train_steps,
    val_check_interval: config()'s.
    """
    settings = dict(interval=interval, every_n_train_steps=every_n_train_steps, val_check_interval=val_check_interval)
    seed = int(os.environ.get("SOAK_SEED", seed if seed is not None else random.SystemRandom().randrange(10**6)))
    print(f"soak seed {seed} (replay with SOAK_SEED={seed})", flush=True)
    rng = random.Random(seed)
    report = Report(seed)
    begun = time.monotonic()
    group = launcher == "subprocess"
    config_path = tmp_path / f"{NAME}.yaml"
    config_path.write_text(config(epochs, batches, **settings))
    total = epochs * batches
    reference = uninterrupted(tmp_path / "reference", epochs, batches, extra, launcher, timeout, **settings)
    startup, per_step = reference.startup, reference.per_step
    print(f"soak seed {seed}: uninterrupted run: {startup:.1f} s to the first step, {per_step * 1000:.0f} ms a step", flush=True)

    work = tmp_path / "work"
    work.mkdir()
    left_behind: list[str] = []  # staging files a kill left (the next checkpoint write removes them)
    kills = len(plan) if plan is not None else kills
    for i in range(kills + 1):
        found = checkpoints_of(work)
        done = read_checkpoint(found[-1])["global_step"] if found else 0
        resume = ["--ckpt_path", "last"] if found else []  # with nothing to resume, start again
        if resume:
            report.resumed_from.append(done)
        elif i:
            report.restarts += 1
        kill = None
        if plan is not None and i < kills and plan[i] is not None:
            kill = plan[i]
        elif i < kills:
            # Kill i aims at the i-th of `kills` equal shares of the steps (the last five aside, so that
            # even a late kill lands before the run ends).
            low, high = (total - 5) * i // kills, max((total - 5) * (i + 1) // kills, (total - 5) * i // kills + 1)
            kind = rng.choice(KINDS)
            step = rng.randrange(low, high)
            if kind == "anytime":
                # At most half the time the rest of the run took uninterrupted, so that a faster
                # attempt is still killed before it ends.
                delay = rng.uniform(0, startup + max(step + 1 - done, 1) * per_step)
                delay = min(delay, 0.5 * (startup + (total - done) * per_step))
            else:
                # Up to about the phase's length here (2-core AMD EPYC, load 7, 2026-12-01): a step
                # 50-120 ms; a validation of 2 x 500 images 0.2-0.4 s; a checkpoint write (torch.save,
                # two fsyncs, the rename) 10-50 ms: 6 of the 11 save kills of a 20-kill run left a staging file.
                delay = rng.uniform(0, {"train": 0.1, "validation": 0.3, "save": 0.05}[kind])
            kill = Kill(kind, step, delay)
        log = work / f"attempt{i}.log"
        args = fit_args(config_path, work / "markers", kill, extra, group, before_last_saves=i < kills - 1)
        attempt = Attempt(launcher, work, args + resume, log)
        where = f"soak seed {seed}, attempt {i} ({'kill ' + str(kill) if kill else 'to the end'})"
        if kill is not None and kill.kind == "anytime":
            if attempt.wait(kill.delay) is None:
                attempt.kill()
        status = attempt.wait(timeout)
        if status is None:
            attempt.kill()
            raise AssertionError(f"{where}: still running after {timeout} s\n{attempt.text()[-3000:]}")
        text = attempt.text()
        resumed = RESUMING.search(text)  # a kill can come before it is printed
        if resume and (resumed or kill is None):
            at = (str(found[-1].relative_to(work)), done)
            assert resumed and (resumed[2], int(resumed[3])) == at, f"{where}: resumed from elsewhere\n{text[-3000:]}"
        if kill is None:
            assert status == 0, f"{where}: exit status {status}\n{text[-3000:]}"
            break
        if kill.signum == signal.SIGKILL:
            assert status == -signal.SIGKILL, f"{where}: exit status {status}, not killed\n{text[-3000:]}"
        else:
            assert status == 128 + kill.signum and "mnist-rnn: stopped by" in text, f"{where}: exit status {status}\n{text[-3000:]}"
        staged = sorted(p.name for p in (work / "runs" / NAME).glob("version_*/checkpoints/.*.tmp"))
        report.torn_writes += bool(set(staged) - set(left_behind))
        left_behind = staged
        found = checkpoints_of(work)
        at = "no checkpoint yet"
        if found:
            at = f"newest checkpoint {found[-1].relative_to(work)} at step {read_checkpoint(found[-1])['global_step']}"
        report.kills.append(f"{kill} -> {at}{', staging file ' + ', '.join(staged) if staged else ''}")
        print(f"soak seed {seed}: kill {i + 1}/{kills}: {report.kills[-1]}", flush=True)

    # The same end: weights, optimizer, schedule, loop counters and the data position, bit for bit.
    expected = read_checkpoint(reference.folder / "runs" / NAME / "version_0" / "checkpoints" / "last.ckpt")
    final_run = checkpoints_of(work)[-1].parent.parent
    got = read_checkpoint(final_run / "checkpoints" / "last.ckpt")
    for key in ("epoch", "global_step", "state_dict", "optimizer_states", "lr_schedulers", "loops", "MNISTDataModule"):
        assert_same_state(got[key], expected[key], f"soak seed {seed}: {key}")

    # The same curves: each scalar's points, in their order, are the uninterrupted run's with at most
    # some left out: nothing repeated, nothing going back, no other value. (Lightning itself logs
    # `epoch` twice at a step that also validates, in any run.)
    want, have = scalars(reference.folder / "runs" / NAME / "version_0"), scalars(final_run)
    assert sorted(have) == sorted(want), f"soak seed {seed}: tags {sorted(have)} != {sorted(want)}"
    for tag, points in want.items():
        lost, left = [], iter(points)
        for point in have[tag]:
            for expected_point in left:
                if expected_point == point:
                    break
                lost.append(expected_point[0])
            else:
                raise AssertionError(
                    f"soak seed {seed}: {tag} has {point} (step, value) where the uninterrupted run has"
                    f" no such point after the ones before it: {have[tag]} against {points}"
                )
        lost += [s for s, _ in left]
        # The one loss RunLogger cannot prevent: a kill in the milliseconds between a checkpoint
        # and the logging of its own step's points (Lightning logs them after the checkpoint
        # callbacks), which the resumed run, starting after that step, does not log again.
        # A validation's points are logged before its checkpoints: none may be lost.
        unexplained = [s for s in lost if s + 1 not in report.resumed_from or tag.startswith("val/")]
        assert not unexplained, f"soak seed {seed}: {tag} lacks the points of steps {unexplained}, not those of a checkpoint's own step"
        if lost:
            report.missing[tag] = lost
        report.points += len(points)
    report.seconds = time.monotonic() - begun
    print(report.summary(), flush=True)
    return report

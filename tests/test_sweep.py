"""`mnist-rnn sweep`: seed sweeps, Optuna searches, resuming a killed sweep, and bad sweep files."""

import csv
import errno
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import torch
import yaml
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_rnn.data.mnist_files import load_split
from mnist_rnn.data.normalization import normalize
from mnist_rnn.model.classifier import LSTMClassifier
from mnist_rnn.run.checkpoints import read_checkpoint
from tests.conftest import TINY, run_main, subprocess_env

# Trials of a few seconds: the tiny model, a handful of batches, fp32 (so that the test accuracy
# computed here, in fp32, is the same number), no sanity check.
QUICK = {
    "trainer": {
        "max_epochs": 1,
        "limit_train_batches": 5,
        "limit_val_batches": 1,
        "limit_test_batches": 2,
        "num_sanity_val_steps": 0,
        "precision": "32-true",
    }
}


def write_sweep(folder: Path, name: str, **content) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": TINY, **content}))
    return path


def read_rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def accuracy_on_test_images(checkpoint: Path, n_images: int) -> float:
    """The checkpoint's accuracy on the first n official test images, computed here without Lightning."""
    saved = read_checkpoint(checkpoint)
    model = LSTMClassifier(**{k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(saved["state_dict"])
    model.eval()
    images, labels = load_split("test")
    with torch.no_grad():
        preds = torch.cat([model(normalize(batch)).argmax(1) for batch in images[:n_images].split(500)])
    return (preds == labels[:n_images]).float().mean().item()




def test_seed_sweep_runs_each_seed_and_reports_mean_and_std(tmp_path):
    sweep = write_sweep(tmp_path, "three", overrides=QUICK, seeds=3)
    status, out, err = run_main("sweep", "-c", str(sweep), cwd=tmp_path)
    assert status == 0, err

    folder = tmp_path / "runs" / "three"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["seed_1", "seed_2", "seed_3"]
    rows = read_rows(folder / "results.csv")
    assert [(r["trial"], r["state"], r["seed"]) for r in rows] == [(str(i), "complete", str(i + 1)) for i in range(3)]

    accuracies = []
    for row in rows:
        run = tmp_path / row["run"]
        assert (run / "config.yaml").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["seed_everything"] == int(row["seed"])
        # 2 test batches of the tiny config's 500 images: the first 1,000 test images.
        own = accuracy_on_test_images(tmp_path / row["best_checkpoint"], 1000)
        # The same 1,000 predictions counted twice: equal but for float32 rounding (a sample is 1e-3).
        assert float(row["test/acc"]) == pytest.approx(own, abs=1e-6)
        accuracies.append(own)
    assert len(set(accuracies)) > 1, "three seeds should not give three identical models"

    summary = json.loads((folder / "summary.json").read_text())
    # Statistics of the same three numbers: equal but for float rounding.
    assert summary["test_acc_mean"] == pytest.approx(statistics.fmean(accuracies), abs=1e-6)
    assert summary["test_acc_std"] == pytest.approx(statistics.stdev(accuracies), abs=1e-6)  # same numbers
    assert (summary["test_acc_min"], summary["test_acc_max"]) == pytest.approx((min(accuracies), max(accuracies)))
    shown = f"{100 * statistics.fmean(accuracies):.2f}% ± {100 * statistics.stdev(accuracies):.2f}%"
    assert f"test/acc over 3 seeds: {shown}" in out
    best = max(rows, key=lambda r: float(r["val/acc_best"]))
    assert f"test it: mnist-rnn test -c {best['run']}/config.yaml --ckpt_path {best['best_checkpoint']}" in out


SPACE = {
    "model.lr": {"low": 0.001, "high": 0.03, "log": True},
    "model.hidden_size": {"low": 8, "high": 24, "step": 8},
    "data.batch_size": {"choices": [32, 64]},
}


def hparams_of(run: Path) -> dict:
    """The HPARAMS tab's settings for one run, read from its TensorBoard events."""
    content = EventAccumulator(str(run)).Reload().PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return {k: v.number_value for k, v in data.session_start_info.hparams.items()}


def test_search_stays_in_its_space_and_reports_the_best_trial(tmp_path):
    quick = QUICK  # one epoch: the pruner compares the trials at epoch 0 (n_warmup_steps 0)
    search = {"n_trials": 4, "sampler_seed": 0, "params": SPACE, "pruner": {"n_startup_trials": 2, "n_warmup_steps": 0}}
    sweep = write_sweep(tmp_path, "four", overrides=quick, search=search)
    status, out, err = run_main("sweep", "-c", str(sweep), "--parallel", "2", cwd=tmp_path)
    assert status == 0, err

    folder = tmp_path / "runs" / "four"
    rows = read_rows(folder / "results.csv")
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    # Each worker samples with its own seed: two workers seeded alike drew the same first settings.
    assert len({r["model.lr"] for r in rows}) == 4
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for row in rows:
        lr, hidden, batch = float(row["model.lr"]), int(row["model.hidden_size"]), int(row["data.batch_size"])
        assert 0.001 <= lr <= 0.03 and hidden in (8, 16, 24) and batch in (32, 64)  # the declared space
        run = tmp_path / row["run"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["model"]["lr"], config["model"]["hidden_size"], config["data"]["batch_size"]) == (lr, hidden, batch)
        assert config["threads"] == threads  # two trials at once share the cores
        # The HPARAMS tab shows each trial's own settings (TensorBoard keeps them as float64).
        shown = hparams_of(run)
        assert (shown["lr"], shown["hidden_size"], shown["batch_size"]) == pytest.approx((lr, hidden, batch))
        if row["state"] == "complete":
            assert 0 <= float(row["test/acc"]) <= 1  # a pruned-or-not trial's score exists and is a fraction
        else:
            assert row["state"] == "pruned" and row["test/acc"] == ""  # a pruned trial is not tested

    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: float(r["val/acc_best"]))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best_trial"] == int(best["trial"])
    assert summary["best_checkpoint"] == best["best_checkpoint"] and (tmp_path / best["best_checkpoint"]).is_file()
    assert f"best trial: {best['trial']}, val/acc_best" in out
    assert f"test it: mnist-rnn test -c {best['run']}/config.yaml --ckpt_path {best['best_checkpoint']}" in out

    # A trial reruns as a plain fit from its config.yaml, in a new run folder next to the first.
    status, _, err = run_main("fit", "-c", f"{best['run']}/config.yaml", "--trainer.max_epochs", "1", cwd=tmp_path)
    assert status == 0, err
    assert (tmp_path / best["run"]).parent.joinpath("version_1", "config.yaml").is_file()


def table(rows: list[dict]) -> list[tuple]:
    """What a sweep found, without its bookkeeping (trial numbers, wall seconds)."""
    return [(r["seed"], r["state"], r["val/acc_best"], r["test/acc"]) for r in rows]


@pytest.mark.slow  # waits out the 30 s heartbeat grace after each kill, and runs the sweep unkilled too: 175-190 s measured (busy 2-core machine)
def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    # The kills after the first land at random moments; the seed is printed (pytest shows it on a failure).
    kill_seed = int(os.environ.get("MNIST_RNN_KILL_SEED", random.randrange(10**6)))
    print(f"kill seed {kill_seed} (MNIST_RNN_KILL_SEED={kill_seed} repeats the draws)")
    draws = random.Random(kill_seed)
    # One slowed-down epoch of 40 steps per seed, with last.ckpt written every 0.2 s of training,
    # so that the kill lands in the middle of the second seed's training.
    slow = {
        "trainer": {
            **QUICK["trainer"],
            "limit_train_batches": 40,
            "callbacks+": [
                {"class_path": "tests.interrupts.Pace", "init_args": {"seconds": 0.05}},
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"filename": "last", "train_time_interval": "0:00:00.2", "enable_version_counter": False},
                },
            ],
        }
    }
    sweep = write_sweep(tmp_path, "killed", overrides=slow, seeds=2)
    folder = tmp_path / "runs" / "killed"
    second = folder / "seed_2" / "version_0" / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "mnist_rnn", "sweep", "-c", str(sweep)]

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen(command + list(extra), cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def kill(process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and whatever it started: no handler runs
        process.wait()
        process.stdout.close()

    running = start()
    deadline = time.monotonic() + 240  # a limit, not a measurement: the wait took about 25 s on the busy 2-core machine
    while not second.exists():
        assert running.poll() is None, running.stdout.read()
        assert time.monotonic() < deadline, "the second trial wrote no checkpoint in time"
        time.sleep(0.05)
    # 40 steps of at least 0.05 s each: 0.5 s after its first last.ckpt (at 0.2 s), the second seed still trains.
    time.sleep(draws.uniform(0, 0.5))
    kill(running)
    assert 0 < read_checkpoint(second)["global_step"] < 40, "the first kill should land inside the second seed's training"
    first_log = (folder / "seed_1" / "fit.log").read_text()

    # Started again without --resume, it refuses to touch the sweep; so does a changed sweep file of the same name.
    status, _, err = run_main("sweep", "-c", str(sweep), cwd=tmp_path)
    assert status == 2 and "--resume" in err
    changed = write_sweep(tmp_path / "runs", "killed", overrides=slow, seeds=3)
    status, _, err = run_main("sweep", "-c", str(changed), "--resume", cwd=tmp_path)
    assert status == 2 and "(seeds, n_trials changed)" in err, err
    changed.unlink()

    # Resumed, and killed again at a random moment: while it waits out the heartbeat, or in the retried
    # trial's fit or test. The retry starts about 20 s after this line and takes about 6 s (busy 2-core machine).
    kills = 1
    for attempt in range(2):
        running = start("--resume")
        header = next((line for line in running.stdout if line.startswith("sweep killed:")), "")
        assert attempt or "1 done, 1 to run" in header, header
        delay = draws.uniform(0, 25)
        try:
            running.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            kill(running)
            kills += 1
            started = (folder / "seed_2" / "fit.log").read_text().count("\n$ ")
            print(f"kill {kills}: {delay:.1f} s after the resumed sweep's first line; seed 2 started {started + 1} times")
    assert kills >= 2

    status, out, err = run_main("sweep", "-c", str(sweep), "--resume", cwd=tmp_path)
    assert status == 0, err
    assert (folder / "seed_1" / "fit.log").read_text() == first_log  # the finished seed did not run again
    second_log = (folder / "seed_2" / "fit.log").read_text()
    attempts = [line for line in second_log.splitlines() if line.startswith("$ ")]
    assert len(attempts) >= 2 and all(attempt.endswith("--ckpt_path last") for attempt in attempts[1:]), attempts
    assert re.search(r"resuming runs/killed/seed_2/version_0 from \S+ \(epoch 1, after step [1-9]", second_log)
    assert sorted(p.name for p in (folder / "seed_2").glob("version_*")) == ["version_0"]
    assert read_checkpoint(second)["global_step"] == 40  # the one run went on to the end

    rows = read_rows(folder / "results.csv")
    assert [(r["seed"], r["state"]) for r in rows] == [("1", "complete"), ("2", "complete")]

    # The same sweep never killed: the same table, to the last digit, and the same mean ± std.
    unkilled = tmp_path / "unkilled"
    unkilled.mkdir()
    status, unkilled_out, err = run_main("sweep", "-c", str(sweep), cwd=unkilled)
    assert status == 0, err
    assert table(rows) == table(read_rows(unkilled / "runs" / "killed" / "results.csv"))
    resumed, never_killed = (json.loads((base / "runs" / "killed" / "summary.json").read_text()) for base in (tmp_path, unkilled))
    assert (resumed["test_acc_mean"], resumed["test_acc_std"]) == (never_killed["test_acc_mean"], never_killed["test_acc_std"])
    assert [line for line in out.splitlines() if line.startswith("test/acc over")] == [
        line for line in unkilled_out.splitlines() if line.startswith("test/acc over")
    ]


class KillOnTest(Callback):
    """SIGKILLs its process as the first test starts (the marker file says it happened): a kill between fit and test."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def on_test_start(self, trainer, pl_module) -> None:
        if not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.slow  # waits out the 30 s heartbeat grace: 76 s measured (busy 2-core machine)
def test_a_sweep_killed_in_a_trials_test_retries_the_test_alone(tmp_path):
    killer = {"class_path": "tests.test_sweep.KillOnTest", "init_args": {"marker": str(tmp_path / "killed")}}
    sweep = write_sweep(tmp_path, "tested", overrides={"trainer": {**QUICK["trainer"], "callbacks+": [killer]}}, seeds=1)
    killed = subprocess.run([sys.executable, "-m", "mnist_rnn", "sweep", "-c", str(sweep)], cwd=tmp_path, env=subprocess_env(),
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL and (tmp_path / "killed").exists(), killed.stdout + killed.stderr
    status, out, err = run_main("sweep", "-c", str(sweep), "--resume", cwd=tmp_path)
    assert status == 0 and "trial 1 (trial 0 again): seed 1" in out, err
    run = tmp_path / "runs" / "tested" / "seed_1"
    assert re.search(r"resuming \S+ from \S+ \(epoch 1, after step 5\)", (run / "fit.log").read_text())  # nothing left to train
    [row] = read_rows(tmp_path / "runs" / "tested" / "results.csv")
    assert row["state"] == "complete" and row["val/acc_best"]  # the metric its fit recorded before the kill
    # The test the kill cut short, run whole: 2 test batches of 500, the first 1,000 images (a sample is 1e-3).
    assert float(row["test/acc"]) == pytest.approx(accuracy_on_test_images(tmp_path / row["best_checkpoint"], 1000), abs=1e-6)


def test_a_full_disk_under_the_results_or_the_study_is_one_line(tmp_path, monkeypatch):
    import mnist_rnn.commands.sweep

    sweep = write_sweep(tmp_path, "full", overrides=QUICK, seeds=1)
    status, _, err = run_main("sweep", "-c", str(sweep), cwd=tmp_path)
    assert status == 0, err
    folder = tmp_path / "runs" / "full"
    results = (folder / "results.csv").read_text()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_database(*args, **kwargs):  # SQLite's own words for a full disk
        raise sqlalchemy.exc.OperationalError("UPDATE studies", {}, sqlite3.OperationalError("database or disk is full"))

    def one_line_naming(path: str, *args: str) -> str:
        status, _, err = run_main("sweep", "-c", str(sweep), "--resume", *args, cwd=tmp_path)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("mnist-rnn: error: cannot write "), err
        assert path in lines[0] and "the disk is full" in lines[0] and "--resume" in lines[0], lines[0]
        return lines[0]

    # results.csv: its new copy cannot be written; the one before stays whole.
    with monkeypatch.context() as patch:
        patch.setattr(mnist_rnn.commands.sweep, "open", full, raising=False)
        one_line_naming("runs/full/results.csv")
    assert (folder / "results.csv").read_text() == results

    # The study: its first write of a resumed sweep finds the disk full.
    with monkeypatch.context() as patch:
        patch.setattr(optuna.storages.RDBStorage, "set_study_user_attr", full_database)
        one_line_naming(str((folder / "sweep.db").resolve()))

    # Space freed, the sweep goes on: nothing was lost.
    status, out, err = run_main("sweep", "-c", str(sweep), "--resume", cwd=tmp_path)
    assert status == 0 and "1 done, 0 to run" in out, err
    assert table(read_rows(folder / "results.csv")) == table(list(csv.DictReader(results.splitlines())))


@pytest.mark.parametrize(
    "content, culprit",
    [
        ({"search": {"n_trials": 2, "params": {"model.lrr": {"low": 0.001, "high": 0.01}}}}, "model.lrr is not a fit option; did you mean model.lr?"),
        ({"search": {"n_trials": 2, "params": {"trainer.max_epoch": {"low": 1, "high": 3}}}}, "trainer.max_epoch is not a fit option"),
        ({"search": {"n_trials": 2, "params": {"model.lr": {"low": 0.01, "high": 0.001}}}}, "model.lr is an empty range (low 0.01 >= high 0.001)"),
        ({"search": {"n_trials": 2, "params": {"model.hidden_size": {"low": 16, "high": 16}}}}, "empty range"),
        ({"search": {"n_trials": 2, "params": {"data.batch_size": {"choices": []}}}}, "data.batch_size.choices is empty"),
        ({"search": {"n_trials": 2, "metric": "val/f1", "params": {"model.lr": {"low": 0.001, "high": 0.01}}}}, "search.metric val/f1 is not valid here: it takes val/acc_best, val/acc"),
        ({"search": {"n_trials": 2, "metric": "test/acc", "params": {"model.lr": {"low": 0.001, "high": 0.01}}}}, "search.metric test/acc is not valid here"),
        ({"base": "no_such_config.yaml", "seeds": 2}, "base config no_such_config.yaml does not exist"),
        ({"seeds": 2, "overrides": {"model": {"hidden_sise": 8}}}, "hidden_sise"),
        ({"search": {"n_trials": 2, "params": {"model.hidden_size": {"low": 0.5, "high": 8.5}}}}, "model.hidden_size"),
        ({"seeds": [1, 1]}, "seeds repeat a value"),
        ({"seeds": 2, "search": {"n_trials": 2, "params": {"model.lr": {"low": 0.001, "high": 0.01}}}}, "give seeds: or search:, not both"),
        ({"seeds": 2, "overrides": {"trainer": {"devices": 2}}}, "trainer.devices 2 / num_nodes 1: a trial runs in its worker's process"),
        ({}, "give seeds:"),
        # Refused by the sweep file's types (sweep_file.SweepFile, Search, Rule), each key named with what it takes.
        ({"seeds": 0}, "seeds 0 is not valid here: it takes a count in 1..10000"),
        ({"seeds": [1, "x"]}, "seeds [1, 'x'] is not valid here"),
        ({"name": "a b", "seeds": 2}, "name a b is not valid here: it takes a plain folder name"),
        ({"seeds": 2, "overrides": 3}, "overrides must be a mapping of fit settings"),
        ({"search": {"n_trials": 2, "params": {"data.batch_size": {"choices": 64}}}}, "data.batch_size.choices must be a list of values"),
        ({"search": {"n_trials": 0, "params": {"model.lr": {"low": 0.001, "high": 0.01}}}}, "search.n_trials 0 is not valid here"),
        ({"search": {"params": {"model.lr": {"low": 0.001, "high": 0.01}}}}, "search.n_trials is required"),
        ({"search": {"n_trials": 2, "direction": "up", "params": {"model.lr": {"low": 0.001, "high": 0.01}}}},
         "search.direction up is not valid here: it takes maximize, minimize"),
        ({"search": {"n_trials": 2, "sampler": "grid", "params": {"model.lr": {"low": 0.001, "high": 0.01}}}},
         "search.sampler grid is not valid here: it takes tpe, random"),
        ({"search": {"n_trials": 2, "params": {"model.lr": {"low": "small", "high": 0.01}}}},
         "search.params.model.lr.low small is not valid here"),
        ({"search": {"n_trials": 2, "params": {"model.lr": {"low": 0.001, "high": 0.01, "log": "maybe"}}}},
         "search.params.model.lr.log maybe is not valid here: it takes true or false"),
        ({"search": {"n_trials": 2, "params": {"model.lr": {"low": 0.001, "hihg": 0.01}}}},
         "unknown key search.params.model.lr.hihg; the keys are type, low, high, step, log, choices"),
        ({"search": {"n_trials": 2, "params": {"model.lr": 0.01}}}, "search.params.model.lr must be a mapping of type, low, high"),
    ],
)
def test_bad_sweep_files_are_refused_before_any_trial(tmp_path, content, culprit):
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(yaml.safe_dump({"base": TINY, **content}))
    status, out, err = run_main("sweep", "-c", str(sweep), cwd=tmp_path)
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist-rnn: error: "), err
    assert culprit in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before any trial started


def test_a_sweep_file_whose_keys_mix_numbers_and_names_is_refused_in_one_line(tmp_path):
    # Sorting the unknown keys once raised TypeError ('<' between str and int): a report-this line.
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(f"base: {TINY}\nseeds: 2\n1: a\nextra: b\n")
    status, _, err = run_main("sweep", "-c", str(sweep), cwd=tmp_path)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("mnist-rnn: error: "), err
    assert "unknown key 1; the keys are" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_missing_sweep_file_and_bad_options_are_one_line_errors(tmp_path):
    for args, culprit in [
        (["-c", "nowhere.yaml"], "sweep file nowhere.yaml not found"),
        (["-c", TINY, "--parallel", "0"], "--parallel 0 is not valid here: it takes an integer from 1 up"),
        (["--resume"], "--config is required"),
    ]:
        status, _, err = run_main("sweep", *args, cwd=tmp_path)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("mnist-rnn: error: ") and culprit in lines[0], err


def test_packaged_sweep_files_are_valid(tmp_path):
    """conf/sweeps/*.yaml parse and check out against the fit parser (nothing is trained)."""
    from mnist_rnn.commands.sweep import check_spec, load_spec

    seeds = load_spec("sweeps/seeds.yaml")  # found among the packaged configs, from any folder
    assert seeds.seeds == list(range(1, 11)) and not seeds.params  # the README's Results: seeds 1-10
    v1 = load_spec("sweeps/seeds-v1.yaml")
    assert v1.seeds == seeds.seeds and [Path(b).name for b in v1.base] == ["default-v1.yaml"]
    best = load_spec("sweeps/seeds-best.yaml")
    assert best.seeds == [1, 2, 3, 4, 5] and [Path(b).name for b in best.base] == ["best.yaml"]  # issue 32: best.yaml over 5 seeds
    search = load_spec("sweeps/search.yaml")
    assert set(search.params) == {"model.lr", "model.hidden_size", "data.batch_size", "model.warmup_pct"}
    for spec in (seeds, v1, best, search):
        check_spec(spec)
    # Read again after fit's parser ran (check_spec): 64..192 is still an int range. Typed Union[int, float], a bound
    # was then read as 64.0 (jsonargparse tried float first), and the range became a float one.
    assert load_spec("sweeps/search.yaml").params["model.hidden_size"] == ("int", {"low": 64, "high": 192, "step": 32, "log": False})
    assert type(load_spec("sweeps/search.yaml").params["model.hidden_size"][1]["low"]) is int


def test_the_spec_a_study_keeps_has_the_form_sweeps_stored_before(tmp_path):
    """A study keeps the sweep's spec and compares it on --resume: the typed sweep file (issue 30) gives the dict the
    hand-checked one gave (checked against it for these files and the packaged ones), so older sweeps resume."""
    from mnist_rnn.commands.sweep_file import load_spec

    params = {"model.lr": {"low": 0.001, "high": 0.01, "log": True}, "data.batch_size": {"choices": [32, 64]}}
    stored = load_spec(str(write_sweep(tmp_path, "form", search={"n_trials": 2, "params": params}))).as_dict()
    assert stored == {
        "base": [Path(TINY).read_text()], "overrides": {}, "seeds": None, "n_trials": 2, "metric": "val/acc_best",
        "params": {"model.lr": ["float", {"low": 0.001, "high": 0.01, "step": None, "log": True}],
                   "data.batch_size": ["categorical", {"choices": [32, 64]}]},
        "direction": "maximize", "sampler": "tpe", "sampler_seed": None, "pruner": "median",
    }  # fmt: skip
    seeds = load_spec(str(write_sweep(tmp_path, "seeds", seeds=2))).as_dict()
    assert seeds == {**stored, "seeds": [1, 2], "params": {}}
    # Fit settings stay as written, for the fit parser: jsonargparse read this callback's interval as a timedelta
    # when overrides went through it (typed Any), which the trial's YAML could not write.
    callback = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"train_time_interval": "0:00:00.2"}}
    overrides = {"trainer": {"callbacks+": [callback]}}
    spec = load_spec(str(write_sweep(tmp_path, "callbacks", seeds=1, overrides=overrides)))
    assert spec.overrides == overrides and "train_time_interval: '0:00:00.2'" in spec.fit_args()[-1]


def test_workers_sharing_a_storage_url_share_one_study(tmp_path):
    """Several machines run the same sweep file with one --storage URL; a worker that comes late finds the work done."""
    sweep = write_sweep(tmp_path, "shared", overrides=QUICK, seeds=1)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"  # stands in for postgresql://... here
    first, second = tmp_path / "machine1", tmp_path / "machine2"
    first.mkdir(), second.mkdir()
    status, out, err = run_main("sweep", "-c", str(sweep), "--storage", storage, cwd=first)
    assert status == 0 and "0 done, 1 to run" in out, err
    status, out, err = run_main("sweep", "-c", str(sweep), "--storage", storage, cwd=second)
    assert status == 0 and "1 done, 0 to run" in out, err  # joined the study without --resume
    assert not (second / "runs" / "shared" / "seed_1").exists()
    assert "best checkpoint: runs/shared/seed_1/version_0/checkpoints/" in out  # the first machine's trial, reported by the second


def test_base_null_is_the_default_base_as_before_the_typed_file(tmp_path):
    # Found by test_fuzz's slow sweep-file case after the file became typed: `base: null` ended in a TypeError.
    from mnist_rnn.commands.sweep import load_spec

    sweep = tmp_path / "null_base.yaml"
    sweep.write_text("base: null\nseeds: [1]\n")
    spec = load_spec(str(sweep))
    assert spec.base == [] and spec.seeds == [1]

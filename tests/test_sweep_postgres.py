"""`mnist-rnn sweep --storage postgresql://...` on a real PostgreSQL server (a throwaway cluster on 127.0.0.1): workers
started together join one study, a killed worker's trial is taken over; and a missing driver, a bad URL, a server that
cannot be reached and a collision creating the tables, each handled without a server or in one line."""

import json
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import optuna
import pytest
import sqlalchemy.exc
from lightning.pytorch import Callback

from mnist_rnn.commands import sweep_storage
from mnist_rnn.errors import MnistRnnError
from tests.conftest import run_main, subprocess_env
from tests.test_sweep import QUICK, read_rows, table, write_sweep

# A worker as a cluster job array starts it: its imports first (about 10 s), then, where START names a file, a wait for
# that file, so that the test lets every worker at the database at the same moment. BEAT_S, GRACE_S: the heartbeat.
LAUNCH = """
import os, runpy, sys, time
import mnist_rnn.commands.sweep as sweep
sweep.HEARTBEAT_S, sweep.GRACE_S = int(os.environ["BEAT_S"]), int(os.environ["GRACE_S"])
if os.environ.get("START"):
    open(f"{os.environ['START']}.{os.getpid()}", "w").close()
    while not os.path.exists(os.environ["START"]):
        time.sleep(0.01)
runpy.run_module("mnist_rnn", run_name="__main__")
"""
BEAT_S, GRACE_S = 1, 3  # a killed worker's trial is retried 3 s after its last beat, not 30 s (the sweep's own settings)
DEADLINE_S = 300  # a limit, not a measurement: a whole test took 57 s at most (busy 2-core machine)


def server_programs() -> Optional[Path]:
    """The folder of initdb, pg_ctl and createdb: on PATH, or Debian's /usr/lib/postgresql/<version>/bin (not on PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return debian[-1].parent if debian else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster: trust authentication, 127.0.0.1 only, no Unix socket, no fsync, torn down after the tests."""

    def __init__(self, programs: Path, folder: Path, as_user: list[str]) -> None:
        self.programs, self.data, self.as_user, self.port = programs, folder / "data", as_user, free_port()
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' -c fsync=off"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(folder / "server.log"), "-o", options, "-w", "start")

    def run(self, program: str, *args: str, as_owner: bool = True) -> None:
        command = [*(self.as_user if as_owner else []), str(self.programs / program), *args]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}{done.stderr}"

    def database(self, name: str) -> str:
        """A new database, made as docs/sweep.md makes it (createdb), and its storage URL."""
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name, as_owner=False)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")


@pytest.fixture(scope="module")
def postgres():
    programs = server_programs()
    if programs is None:
        pytest.skip("no PostgreSQL server programs (initdb) on this machine: apt-get install postgresql")
    as_user = []
    if os.geteuid() == 0:  # initdb and the server refuse to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no postgres user to run the PostgreSQL server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="mnist-rnn-postgres-"))  # not under pytest's root-only tmp: the server's user reads it
    if as_user:
        shutil.chown(folder, "postgres")
    try:
        cluster = Cluster(programs, folder, as_user)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_worker(machine: Path, sweep: Path, url: str, start: Optional[Path] = None) -> subprocess.Popen:
    """`mnist-rnn sweep -c SWEEP --storage URL` in its own folder, as on a machine of its own."""
    machine.mkdir(exist_ok=True)
    env = {**subprocess_env(), "BEAT_S": str(BEAT_S), "GRACE_S": str(GRACE_S), "START": str(start or "")}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, "sweep", "-c", str(sweep), "--storage", url], cwd=machine, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def finish(*workers: subprocess.Popen) -> list[tuple[int, str]]:
    """Each worker's exit status and output; one still running after DEADLINE_S is killed, and says so."""
    deadline, ended = time.monotonic() + DEADLINE_S, []
    for worker in workers:
        try:
            out, _ = worker.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            out = worker.communicate()[0] + f"\n(killed: still running after {DEADLINE_S} s)"
        ended.append((worker.returncode, out))
    return ended


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE_S} s"
        time.sleep(0.05)


class Meet(Callback):
    """Holds a trial at its start until trials of `workers` processes have started: each worker surely runs one."""

    def __init__(self, folder: str, workers: int) -> None:
        self.folder, self.workers = Path(folder), workers

    def on_train_start(self, trainer, pl_module) -> None:
        self.folder.mkdir(exist_ok=True)
        (self.folder / str(os.getpid())).touch()
        wait_for(lambda: len(list(self.folder.iterdir())) >= self.workers, f"trials of {self.workers} workers at once")


class KillOnce(Callback):
    """SIGKILLs its process at a training step, once (the marker file says it happened): a worker lost inside a trial."""

    def __init__(self, marker: str, step: int) -> None:
        self.marker, self.step = Path(marker), step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


def study_table(url: str, name: str) -> list[tuple]:
    """The study's finished trials as results.csv writes them (by seed; the retried attempts left out)."""
    trials = optuna.load_study(study_name=name, storage=url).get_trials(states=[optuna.trial.TrialState.COMPLETE])
    rows = [{"seed": str(t.params["seed"]), "state": "complete", **{k: str(t.user_attrs[k]) for k in ("val/acc_best", "test/acc")}}
            for t in sorted(trials, key=lambda t: t.params["seed"])]
    return table(rows)


@pytest.mark.slow  # three workers' imports and four quick trials: 17 s measured (2-core machine, load 1.5), 55 s at load 7.6
def test_workers_started_together_on_an_empty_database_share_one_study(postgres, tmp_path):
    url = postgres.database("together")
    meet = {"class_path": "tests.test_sweep_postgres.Meet", "init_args": {"folder": str(tmp_path / "met"), "workers": 2}}
    sweep = write_sweep(tmp_path, "together", overrides={"trainer": {**QUICK["trainer"], "callbacks+": [meet]}}, seeds=4)
    machines = [tmp_path / f"machine{i}" for i in (1, 2, 3)]
    start = tmp_path / "start"
    together = [start_worker(machine, sweep, url, start) for machine in machines[:2]]
    wait_for(lambda: len(list(tmp_path.glob("start.*"))) == 2, "both workers imported")
    start.touch()  # both meet the empty database at once: its tables, the study and the seed queue
    ended = finish(*together)
    assert [status for status, _ in ended] == [0, 0], "\n\n".join(out for _, out in ended)
    assert all("sweep together: 4 seeds;" in out for _, out in ended), ended

    # A third worker, late: the study is done, and it runs nothing.
    [(status, out)] = finish(start_worker(machines[2], sweep, url))
    assert status == 0 and "4 done, 0 to run" in out and "\ntrial " not in out, out
    assert not list((machines[2] / "runs" / "together").glob("seed_*"))

    # Each seed once in the study, complete; each of the first two workers ran some of them, none ran one twice.
    trials = optuna.load_study(study_name="together", storage=url).get_trials()
    assert sorted((t.params["seed"], t.state.name) for t in trials) == [(seed, "COMPLETE") for seed in (1, 2, 3, 4)]
    ran = [{p.name for p in (machine / "runs" / "together").glob("seed_*")} for machine in machines[:2]]
    assert all(ran) and not ran[0] & ran[1] and ran[0] | ran[1] == {f"seed_{seed}" for seed in (1, 2, 3, 4)}, ran

    # Every worker's results.csv and summary.json are the study's.
    expected = study_table(url, "together")
    summaries = []
    for machine in machines:
        folder = machine / "runs" / "together"
        assert table(read_rows(folder / "results.csv")) == expected, machine.name
        summaries.append(json.loads((folder / "summary.json").read_text()))
    assert summaries[0] == summaries[1] == summaries[2]
    assert summaries[0]["test_acc_mean"] == statistics.fmean(float(row[3]) for row in expected)


@pytest.mark.slow  # two workers' imports, the 3 s grace and an unkilled sweep: 19 s measured (2-core machine, load 1.5), 57 s at load 7.6
def test_a_worker_killed_in_a_trial_is_taken_over_by_another(postgres, tmp_path):
    url = postgres.database("killed")
    marker = tmp_path / "killed"
    killer = {"class_path": "tests.test_sweep_postgres.KillOnce", "init_args": {"marker": str(marker), "step": 3}}
    sweep = write_sweep(tmp_path, "killed", overrides={"trainer": {**QUICK["trainer"], "callbacks+": [killer]}}, seeds=2)
    first, second = tmp_path / "machine1", tmp_path / "machine2"

    [(status, out)] = finish(start_worker(first, sweep, url))
    assert status == -signal.SIGKILL and marker.exists(), out
    [running] = optuna.load_study(study_name="killed", storage=url).get_trials(states=[optuna.trial.TrialState.RUNNING])
    assert running.params == {"seed": 1}  # the kill left its trial running, as a lost machine does

    # Another machine (no shared folder) takes the trial over once its heartbeat is GRACE_S old, from the start.
    [(status, out)] = finish(start_worker(second, sweep, url))
    assert status == 0 and "(trial 0 again): seed 1" in out, out
    rows = read_rows(second / "runs" / "killed" / "results.csv")
    assert [(r["seed"], r["state"]) for r in rows] == [("1", "complete"), ("2", "complete")]
    assert table(rows) == study_table(url, "killed")

    # The same sweep never killed (the marker is there: it kills no more): the same table, to the last digit.
    unkilled = tmp_path / "unkilled"
    unkilled.mkdir()
    status, _, err = run_main("sweep", "-c", str(sweep), cwd=unkilled)
    assert status == 0, err
    assert table(rows) == table(read_rows(unkilled / "runs" / "killed" / "results.csv"))


def test_the_setup_lock_is_one_worker_at_a_time_and_a_stuck_one_is_one_line(postgres, monkeypatch):
    url = postgres.database("locked")
    monkeypatch.setattr(sweep_storage, "LOCK_WAIT_S", 1)
    with sweep_storage.one_at_a_time(url):
        with pytest.raises(MnistRnnError) as refused:  # a second worker, on a connection of its own, waits 1 s
            with sweep_storage.one_at_a_time(url):
                pass
    assert str(refused.value).startswith(f"--storage {url}: another worker has been setting up a sweep for 1 s"), refused.value
    with sweep_storage.one_at_a_time(url):  # freed when its holder is done
        pass


def one_line(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("mnist-rnn: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "url, module, words",
    [
        ("postgresql://me:secret@dbhost/mnist_sweeps", "psycopg", "mnist-rnn sweep --storage postgresql://me:***@dbhost/mnist_sweeps"
         ' needs psycopg, which is not installed; pip install "mnist-rnn[postgres]"'),
        ("mysql://me:secret@dbhost/mnist_sweeps", "MySQLdb", "mnist-rnn sweep --storage mysql://me:***@dbhost/mnist_sweeps"
         " needs mysqldb, which is not installed; pip install mysqlclient"),
    ],
)  # fmt: skip
def test_a_storage_url_without_its_driver_is_one_line_before_anything(tmp_path, monkeypatch, url, module, words):
    monkeypatch.setitem(sys.modules, module, None)  # the driver not installed: importing it fails
    sweep = write_sweep(tmp_path, "nodriver", overrides=QUICK, seeds=1)
    line = one_line(*run_main("sweep", "-c", str(sweep), "--storage", url, cwd=tmp_path)[::2])
    assert line == f"mnist-rnn: error: {words}" and "secret" not in line
    assert not (tmp_path / "runs").exists()  # refused before anything was made


@pytest.mark.parametrize(
    "url, words",
    [
        ("postgres://me:secret@dbhost/db",
         "--storage postgres://me:***@dbhost/db: Can't load plugin: sqlalchemy.dialects:postgres; give an SQLAlchemy database URL"),
        ("dbhost/db", "--storage is not a database URL; give an SQLAlchemy database URL such as postgresql://USER:PASSWORD@HOST/DATABASE"),
        ("postgresql://me:secret@127.0.0.1:{free_port}/db", "cannot connect (connection failed: connection to server at"),
    ],
)  # fmt: skip
def test_a_bad_storage_url_or_an_unreachable_server_is_one_line(tmp_path, url, words):
    url = url.format(free_port=free_port())  # chosen when the test runs: every xdist worker must collect the same ids
    sweep = write_sweep(tmp_path, "badurl", overrides=QUICK, seeds=1)
    line = one_line(*run_main("sweep", "-c", str(sweep), "--storage", url, cwd=tmp_path)[::2])
    assert words in line and "secret" not in line, line


def test_a_collision_creating_the_tables_is_tried_again_silently_then_is_one_line(monkeypatch, capsys):
    # Optuna issue #1092, as PostgreSQL reported it to a second worker creating the tables at once.
    duplicate = Exception('duplicate key value violates unique constraint "pg_type_typname_nsp_index"')
    collision = sqlalchemy.exc.IntegrityError("CREATE TYPE studydirection AS ENUM ('NOT_SET', 'MINIMIZE', 'MAXIMIZE')", {}, duplicate)
    calls = []

    def storage(url, **options):
        calls.append(options)
        if len(calls) < failures:
            raise collision
        return "storage"

    monkeypatch.setattr(sweep_storage, "RDBStorage", storage)
    monkeypatch.setattr(sweep_storage, "PAUSE_S", 0)
    failures = sweep_storage.TRIES  # the last try succeeds
    assert sweep_storage.open_storage("sqlite:///study.db", grace_period=30) == "storage"
    assert calls == [{"grace_period": 30}] * sweep_storage.TRIES and capsys.readouterr() == ("", "")

    calls.clear()
    failures = sweep_storage.TRIES + 1  # every try collides
    with pytest.raises(MnistRnnError) as refused:
        sweep_storage.open_storage("sqlite:///study.db")
    assert len(calls) == sweep_storage.TRIES
    assert str(refused.value) == (f"sqlite:///study.db: Optuna's tables could not be created in {sweep_storage.TRIES} tries"
                                  ' (duplicate key value violates unique constraint "pg_type_typname_nsp_index");'
                                  " start this worker again once another has started")  # fmt: skip

    # Anything else is not a collision: it is raised as it came (a full disk is reported by the sweep itself).
    calls.clear()
    def full(url, **options):
        raise sqlalchemy.exc.OperationalError("UPDATE studies", {}, Exception("database or disk is full"))

    monkeypatch.setattr(sweep_storage, "RDBStorage", full)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        sweep_storage.open_storage("sqlite:///study.db")

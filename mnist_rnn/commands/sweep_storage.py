"""The sweep's Optuna storage: its database driver checked before anything is made (one line naming what to install), and
the study set up by one worker at a time, so that workers started together on an empty database join one study.

Two workers creating Optuna's tables at once collide (Optuna issue #1092: `CREATE TYPE studydirection` or a table fails with
"already exists"), and two finding the study new both queue its seeds. On PostgreSQL the setup (tables, study, seed queue)
runs under an advisory lock; on any database a creation of the tables that fails so is tried again, silently."""

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy
from optuna.storages import RDBStorage
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from mnist_rnn.commands.sweep_file import SweepError
from mnist_rnn.errors import MissingExtraError

# SQLAlchemy's driver (the module a URL's dialect imports) -> what installs it; psycopg 3 is what postgresql:// uses.
DRIVERS = {"psycopg": '"mnist-rnn[postgres]"', "psycopg2": "psycopg2-binary", "mysqldb": "mysqlclient", "pymysql": "PyMySQL"}
LOCK_KEY = int.from_bytes(b"mnistrnn", "big")  # pg_advisory_lock's 64-bit key: the same for every sweep of the database
# Creating the tables in an empty PostgreSQL database took 1.4 s, opening them 0.13 s (2026-12-07, 2-core AMD EPYC).
LOCK_WAIT_S = 60  # a worker holding the setup lock this long is stuck (the setup takes a few seconds)
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout (psycopg: .sqlstate, psycopg2: .pgcode)
TRIES, PAUSE_S = 5, 1.0  # 5 tries 1 s apart outlast another worker's 1.4 s creation of the tables


def shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def parse(url: str) -> URL:
    """The URL, its dialect and its driver checked: one line for a URL SQLAlchemy cannot read and for a missing driver."""
    example = "give an SQLAlchemy database URL such as postgresql://USER:PASSWORD@HOST/DATABASE"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SweepError(f"--storage is not a database URL; {example}") from None  # not echoed: it may hold a password
    try:
        dialect = parsed.get_dialect()
    except ArgumentError as err:  # NoSuchModuleError: postgres://, a misspelt name
        raise SweepError(f"--storage {shown(parsed)}: {err}; {example}") from None
    try:
        dialect.import_dbapi()
    except ImportError:
        driver = dialect.driver
        raise MissingExtraError(f"mnist-rnn sweep --storage {shown(parsed)} needs {driver}, which is not installed;"
                                f" pip install {DRIVERS.get(driver, driver)}") from None  # fmt: skip
    return parsed


@contextlib.contextmanager
def one_at_a_time(url: str) -> Iterator[None]:
    """The study's setup by one worker at a time: on PostgreSQL, under an advisory lock held on a connection of its own (the
    server frees it when the worker dies); elsewhere, with nothing (a creation of the tables that collides is retried)."""
    parsed = parse(url)
    if parsed.get_backend_name() != "postgresql":
        yield
        return
    engine = sqlalchemy.create_engine(parsed, poolclass=sqlalchemy.pool.NullPool)
    try:
        connection = engine.connect()
    except OperationalError as err:
        cause = str(err.orig).splitlines()[0]
        raise SweepError(f"--storage {shown(parsed)}: cannot connect ({cause}); start the database server, or correct the URL") from None
    try:
        with connection:
            connection.execute(sqlalchemy.text(f"SET lock_timeout = '{LOCK_WAIT_S}s'"))
            try:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            except OperationalError as err:
                if LOCK_NOT_AVAILABLE not in (getattr(err.orig, "sqlstate", None), getattr(err.orig, "pgcode", None)):
                    raise
                raise SweepError(f"--storage {shown(parsed)}: another worker has been setting up a sweep for {LOCK_WAIT_S} s"
                                 f" (pg_advisory_lock({LOCK_KEY})); stop it, or start this one again") from None  # fmt: skip
            yield  # the lock is the session's: it lasts until the connection closes
    finally:
        engine.dispose()


def collided(err: DBAPIError) -> bool:
    """Another worker created the same table, type or row first."""
    return isinstance(err, IntegrityError) or "already exists" in str(err.orig)


def open_storage(url: str, **options: Any) -> RDBStorage:
    """Optuna's RDBStorage (its options as given), its driver checked first; a creation of its tables that collides with
    another worker's is tried again, up to TRIES times, and then is one line."""
    parsed = parse(url)
    for _ in range(TRIES):
        try:
            return RDBStorage(url, **options)
        except DBAPIError as err:
            if not collided(err):
                raise
            cause = str(err.orig).splitlines()[0]
            time.sleep(PAUSE_S)
    raise SweepError(f"{shown(parsed)}: Optuna's tables could not be created in {TRIES} tries ({cause});"
                     " start this worker again once another has started")

"""Study storage: Optuna's RDB storage opened so that many processes can share it and ride out a database
that goes away for a few seconds, with URLs that never show their password.

* :func:`redact` / :func:`redact_text`: ``postgresql://user:***@host/db`` wherever nasforge prints, logs or
  records a storage URL or an error that might quote one.
* :func:`open_storage`: SQLite in write-ahead-log mode (one machine, several processes) or a server
  database with ``pool_pre_ping`` (a connection that died while pooled is replaced before use); every call
  Optuna makes on it is retried while the database is unreachable (:class:`RetryingRDBStorage`).
* :func:`tally` and :class:`StudyLock`: the counts of a study's trials by state, read from the database,
  and a lock that one process at a time holds while it finishes a trial, so a budget of completed trials is
  met exactly however many workers race for the last one (``nasforge.search.worker``);
  :func:`orphaned_trials` finds the trials of workers that died before their first heartbeat.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import random
import re
import sqlite3
import threading
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar
from urllib.parse import quote_plus

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc

from nasforge.errors import Location, SpecError

MEMORY_STORAGE = ":memory:"
STORAGE_ENV = "NASFORGE_STORAGE"
"""The storage URL when a command has no ``--storage``: a password in the environment is not shown to other
users the way a command line is (``ps``)."""
RETRY_S = 120.0
"""How long a storage call keeps retrying while the database is unreachable (a restart takes seconds; a
worker that gives up sooner would crash on a routine failover)."""
SQLITE_BUSY_S = 60.0
"""How long a SQLite writer waits for another process's transaction before the retry loop takes over."""
LOCK_CLASS = 0x6E66  # "nf": the first key of nasforge's PostgreSQL advisory locks, the study id the second
_URL_CREDENTIALS = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)@")
_ANY_CREDENTIALS = re.compile(r"(?P<head>[^:/@\s]*:)(?P<secret>[^@\s]*)@")
_log = logging.getLogger(__name__)
T = TypeVar("T")


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (when SQLAlchemy cannot parse it, anything between a
    colon and an ``@``)."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: fall back to the pattern
        return _ANY_CREDENTIALS.sub(r"\g<head>***@", url)


def redact_text(text: str, url: str) -> str:
    """``text`` (an error message, a log line) with ``url``'s password removed, whether quoted raw, URL
    encoded or as part of any other URL."""
    text = _URL_CREDENTIALS.sub(r"\g<head>***@", text)
    try:
        password = sqlalchemy.engine.make_url(url).password
    except Exception:
        match = _URL_CREDENTIALS.search(url)
        password = match.group("secret") if match else None
    for secret in {str(password), quote_plus(str(password))} if password else ():
        text = text.replace(secret, "***")
    return text


def transient(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it: Optuna wraps SQLAlchemy's errors, which wrap the driver's) says the
    database could not be reached or was busy, rather than that the request was wrong."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__
    return False


def with_retries(call: Callable[[], T], retry_s: float, what: str, on_retry: Callable[[], None] | None = None) -> T:
    """``call()``, again after a growing pause while it fails with a :func:`transient` error, for up to
    ``retry_s`` seconds."""
    deadline = time.monotonic() + retry_s
    pause = 0.1
    while True:
        try:
            return call()
        except Exception as err:
            if not transient(err) or time.monotonic() > deadline:
                raise
            _log.warning("study storage unreachable during %s (%s); retrying in %.1f s", what,
                         type(err).__name__, pause)
            if on_retry is not None:
                on_retry()
            time.sleep(pause * (1 + random.random()))  # jitter: workers do not come back all at once
            pause = min(pause * 2, 2.0)


class RetryingRDBStorage(RDBStorage):
    """An ``RDBStorage`` whose every storage call is retried while the database is unreachable.

    It stays an ``RDBStorage``, so Optuna still puts its trial cache in front of it and still runs
    heartbeats through it. Only the outermost call retries (a call made from inside another is not retried
    on its own, so the waits do not multiply). A retried write whose commit reached the server before the
    connection broke can run twice: Optuna's writes are idempotent except creating a trial, and such a
    second trial (no heartbeat ever) is failed and retried like a dead worker's (:func:`orphaned_trials`)."""

    def __init__(self, url: str, *, retry_s: float = RETRY_S, **kwargs: Any) -> None:
        self.retry_s = retry_s
        self._depth = threading.local()
        super().__init__(url, **kwargs)


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(self._depth, "n", 0)
        self._depth.n = depth + 1
        try:
            if depth:
                return method(self, *args, **kwargs)
            return with_retries(lambda: method(self, *args, **kwargs), self.retry_s, name,
                                on_retry=self.scoped_session.remove)
        finally:
            self._depth.n = depth

    return call


# every method Optuna's storage interface, its heartbeat and its trial cache call on an RDB storage
for _name in sorted({n for c in (BaseStorage, BaseHeartbeat) for n in vars(c)
                     if not n.startswith("__") and callable(getattr(RDBStorage, n, None))}
                    | {"_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id"}
                    - {"remove_session"}):
    setattr(RetryingRDBStorage, _name, _retrying(_name))


class WalConnection(sqlite3.Connection):
    """A SQLite connection in write-ahead-log mode with ``synchronous=NORMAL``. A trial makes some 25 small
    transactions (each suggestion and attribute is one); in SQLite's default rollback-journal mode each
    commit waits for the disk, which measured 3 to 30 ms a commit on a busy disk, up to 0.7 s a trial. In
    WAL mode a commit is an append, readers do not block the writer (several worker processes), and a
    killed process loses nothing (only a power cut can undo the last commits, never corrupt the file)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")


def engine_url(url: str) -> str:
    """``url`` with a PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare ``postgresql://`` as
    psycopg 3, while psycopg2 (nasforge's ``postgres`` extra) is the common one; an explicit
    ``postgresql+DRIVER://`` is left alone."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def open_storage(url: str, heartbeat_s: int, grace_s: int, max_retry: int) -> BaseStorage:
    """The storage behind ``url``: in memory for :data:`MEMORY_STORAGE` (one process, nothing to resume, no
    heartbeat), otherwise a :class:`RetryingRDBStorage` with heartbeats every ``heartbeat_s`` seconds; a
    trial silent for ``grace_s`` is failed and retried up to ``max_retry`` times by the next process that
    starts a trial."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url == MEMORY_STORAGE:
        return optuna.storages.InMemoryStorage()
    sqlite = url.startswith("sqlite:")
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"factory": WalConnection, "timeout": SQLITE_BUSY_S}} if sqlite else
        {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else
        {"pool_pre_ping": True})
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RetryingRDBStorage(
                engine_url(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry))
    except Exception as err:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
        raise SpecError(f"cannot open study storage: {redact_text(str(err), url).splitlines()[0]}",
                        location=Location("--storage"),
                        expected=f"sqlite:///PATH.db, another SQLAlchemy URL or {MEMORY_STORAGE}",
                        found=redact(url)) from None


def rdb_of(study: optuna.Study) -> RDBStorage | None:
    """The RDB storage under a study's trial cache, or None for an in-memory study."""
    storage = study._storage  # noqa: SLF001 (Optuna's cache hides the engine that counts and locks need)
    storage = getattr(storage, "_backend", storage)
    return storage if isinstance(storage, RDBStorage) else None


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Write several user attributes of a running trial in one transaction (one commit instead of one per
    attribute: on PostgreSQL every commit waits for the disk), retried like any storage call. Falls back to
    Optuna's one-attribute calls where the storage is not an RDB one or its internals differ."""
    rdb = rdb_of(trial.study)
    write_one = getattr(rdb, "_set_trial_attr_without_commit", None)
    if rdb is None or write_one is None or not attrs:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    def write() -> None:
        with _create_scoped_session(rdb.scoped_session, True) as session:
            for key, value in attrs.items():
                write_one(session, models.TrialUserAttributeModel, trial._trial_id, key, value)  # noqa: SLF001

    with_retries(write, getattr(rdb, "retry_s", RETRY_S), "writing trial attributes",
                 on_retry=rdb.scoped_session.remove)
    trial._cached_frozen_trial.user_attrs.update(attrs)  # noqa: SLF001 (what Trial.set_user_attr keeps in step)


def tally(study: optuna.Study) -> Counter[TrialState]:
    """How many of the study's trials are in each state, counted by the database (one query, whatever the
    number of trials), not read from this process's cache."""
    rdb = rdb_of(study)
    if rdb is None:
        return Counter(t.state for t in study.get_trials(deepcopy=False))
    from optuna.storages._rdb.models import TrialModel

    query = (sqlalchemy.select(TrialModel.state, sqlalchemy.func.count())
             .where(TrialModel.study_id == study._study_id).group_by(TrialModel.state))  # noqa: SLF001

    def count() -> Counter[TrialState]:
        with rdb.engine.connect() as conn:
            return Counter({state: int(n) for state, n in conn.execute(query)})

    return with_retries(count, getattr(rdb, "retry_s", RETRY_S), "counting trials")


def orphaned_trials(study: optuna.Study) -> list[int]:
    """Ids of RUNNING trials that never recorded a heartbeat and started more than the grace period ago: a
    worker killed between creating its trial and its first heartbeat (a few milliseconds, but cheap trials
    make many). Optuna's stale check skips them, so they would stay RUNNING and hold a slot of the budget
    for ever. Start times are UTC from the creating machine's clock (machines keep time by NTP)."""
    rdb = rdb_of(study)
    if rdb is None or rdb.grace_period is None:
        return []
    from optuna.storages._rdb.models import TrialHeartbeatModel, TrialModel

    cutoff = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=rdb.grace_period)
    query = (sqlalchemy.select(TrialModel.trial_id)
             .outerjoin(TrialHeartbeatModel, TrialHeartbeatModel.trial_id == TrialModel.trial_id)
             .where(TrialModel.study_id == study._study_id, TrialModel.state == TrialState.RUNNING,  # noqa: SLF001
                    TrialHeartbeatModel.trial_id.is_(None), TrialModel._datetime_start_utc < cutoff))  # noqa: SLF001

    def find() -> list[int]:
        with rdb.engine.connect() as conn:
            return [int(row[0]) for row in conn.execute(query)]

    return with_retries(find, getattr(rdb, "retry_s", RETRY_S), "looking for orphaned trials")


class StudyLock:
    """Held by one process at a time, per study, while it decides whether a finished trial still counts
    toward the budget and records it: PostgreSQL's transaction-scoped advisory lock, or an exclusive
    ``flock`` on a file beside a SQLite database (SQLite is one machine's). Both are released by the
    operating system or the server when the holder dies, so a killed worker never leaves the study locked.
    Other server databases and in-memory studies get no lock (one process, or not exact under races)."""

    def __init__(self, study: optuna.Study) -> None:
        self.rdb = rdb_of(study)
        self.study_id = study._study_id  # noqa: SLF001
        self.dialect = self.rdb.engine.dialect.name if self.rdb is not None else "memory"

    @contextmanager
    def held(self) -> Iterator[None]:
        if self.rdb is not None and self.dialect == "postgresql":
            rdb = self.rdb

            def lock() -> sqlalchemy.Connection:
                conn = rdb.engine.connect()
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:a, :b)"),
                                 {"a": LOCK_CLASS, "b": self.study_id})
                except BaseException:
                    conn.close()
                    raise
                return conn

            conn = with_retries(lock, getattr(rdb, "retry_s", RETRY_S), "locking the study")
            try:
                yield
            finally:
                try:
                    conn.rollback()  # ends the transaction, which releases the lock
                except sa_exc.DBAPIError:
                    pass  # the connection died: the server released the lock with it
                conn.close()
        elif self.rdb is not None and self.dialect == "sqlite" and self.rdb.engine.url.database not in (
                None, "", MEMORY_STORAGE):
            path = Path(f"{self.rdb.engine.url.database}.nasforge-lock")
            with open(path, "a+b") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        else:
            yield

"""Measured latencies that survive the process and are shared by every worker on this machine.

A latency is a fact about one machine (its CPU, the thread count, the backend and the target), so the cache
is a file on the machine, not a table in the study's database: workers on other hosts must not reuse it,
while every worker and every later search on this host should. The file is SQLite in write-ahead-log mode:
readers never wait, writers take turns in transactions (a busy writer waits instead of failing), so several
processes writing at once lose no record and cannot tear the file, and a killed writer leaves nothing half
written.

The first measurement of a key wins (``INSERT ... ON CONFLICT DO NOTHING``, then read back): two workers that
measured the same network at the same time both report the stored number, so a network's objective value
does not depend on which worker met it first. The key is whatever identifies the measured thing (a network's
graph hash, or a workload's) plus the backend, the target and this host's identity.

    cache = LatencyCache()                       # ~/.cache/nasforge/latency.sqlite (NASFORGE_CACHE_DIR)
    ms = cache.get_or_measure(graph_hash, "eager", "cpu-1t", lambda: measure(spec))
"""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

CACHE_DIR_ENV = "NASFORGE_CACHE_DIR"
FILE_NAME = "latency.sqlite"
MEMORY = ":memory:"
BUSY_TIMEOUT_S = 60.0
"""How long a writer waits for another's transaction before giving up (writes take microseconds)."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS latency (
    key      TEXT NOT NULL,
    backend  TEXT NOT NULL,
    target   TEXT NOT NULL,
    host     TEXT NOT NULL,
    ms       REAL NOT NULL,
    recorded REAL NOT NULL,
    PRIMARY KEY (key, backend, target, host)
)"""


def cache_dir() -> Path:
    """Where nasforge keeps caches: ``$NASFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/nasforge``, else
    ``~/.cache/nasforge``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "nasforge"


@lru_cache(maxsize=1)
def host_id() -> str:
    """This machine as latencies depend on it: CPU model, architecture and logical cores (a cache directory
    on a shared home folder must not hand one machine's numbers to another)."""
    model = platform.processor() or "unknown-cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({platform.machine()}, {os.cpu_count()} cpus)"


class LatencyCache:
    """Latencies in milliseconds keyed by ``(key, backend, target, host)``; see the module docstring.

    ``path`` is a SQLite file (created with its folder), :data:`MEMORY` for a cache private to this object,
    or None for the default file in :func:`cache_dir`. A connection belongs to one process: a forked child
    opens its own on first use."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = MEMORY if str(path) == MEMORY else Path(path) if path else cache_dir() / FILE_NAME
        self.host = host_id()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    @classmethod
    def in_memory(cls) -> "LatencyCache":
        return cls(MEMORY)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            if isinstance(self.path, Path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit (isolation_level=None): each statement is its own transaction, so no read ever
            # holds a snapshot or a lock across calls; writes wait for each other up to the busy timeout
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, key: str, backend: str, target: str) -> float | None:
        """The stored latency, or None when nobody measured it on this host."""
        row = self._connection().execute(
            "SELECT ms FROM latency WHERE key = ? AND backend = ? AND target = ? AND host = ?",
            (key, backend, target, self.host)).fetchone()
        return None if row is None else float(row[0])

    def put(self, key: str, backend: str, target: str, ms: float) -> float:
        """Record ``ms`` unless someone recorded this key first; returns the value that stands."""
        if not (math.isfinite(ms) and ms >= 0):
            raise ValueError(f"a latency must be a finite number of milliseconds >= 0, not {ms!r}")
        self._connection().execute(
            "INSERT INTO latency (key, backend, target, host, ms, recorded) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING", (key, backend, target, self.host, float(ms), time.time()))
        stored = self.get(key, backend, target)
        assert stored is not None  # the row exists now: ours or the first writer's
        return stored

    def get_or_measure(self, key: str, backend: str, target: str, measure: Callable[[], float]) -> float:
        """The stored latency, else ``measure()`` recorded (the first writer's value if another process
        measured the same key meanwhile)."""
        stored = self.get(key, backend, target)
        return stored if stored is not None else self.put(key, backend, target, measure())

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT COUNT(*) FROM latency").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

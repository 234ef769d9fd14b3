"""Fixtures of the search tests: a private PostgreSQL server for the session and a fresh database per test.

Tests marked ``postgres`` skip only when no server can be started on this machine, and say why; with
``NASFORGE_TEST_POSTGRES=required`` (CI sets it) that is a failure instead of a skip.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.search.postgres import LocalPostgres, Unavailable


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    root = Path(tempfile.mkdtemp(prefix="nasforge-pg-"))
    try:
        server = LocalPostgres.start(root)
    except Unavailable as err:
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("NASFORGE_TEST_POSTGRES") == "required":
            pytest.fail(f"NASFORGE_TEST_POSTGRES=required but no PostgreSQL server could be started: {err}")
        pytest.skip(f"no PostgreSQL server could be started: {err}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> Iterator[str]:
    """A new empty database on the session's server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets an empty latency cache of its own, out of the user's ~/.cache (worker processes
    inherit the environment), so that no test sees latencies another one measured."""
    monkeypatch.setenv("NASFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("nasforge-cache")))

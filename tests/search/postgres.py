"""A private PostgreSQL server for tests and benchmarks: ``initdb`` in a temporary folder, ``pg_ctl start`` on
a free loopback port, one database per user of it, everything removed on :meth:`LocalPostgres.stop`.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system user that Debian's
package creates (``runuser -u postgres``). :class:`Unavailable` says why no server could be started (no
binaries, no such user, a start that failed) so that tests can skip with the reason.

    server = LocalPostgres.start(Path("/tmp/pg"))
    url = server.create_database("study")          # postgresql://nasforge@127.0.0.1:PORT/study
    ...
    server.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

USER = "nasforge"
"""The server's superuser (trust authentication on loopback: a test server, never a real one)."""
FAST = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off",)
"""Settings for a throwaway server: no durability, since its data dies with it anyway."""


class Unavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def find_bindir() -> Path:
    """The folder of ``pg_ctl`` and ``initdb``: from PATH, else the newest ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise Unavailable("PostgreSQL is not installed (no pg_ctl on PATH or in /usr/lib/postgresql/*/bin; "
                          "apt-get install postgresql)")
    return Path(candidates[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """One running private server; see the module docstring."""

    def __init__(self, bindir: Path, root: Path, port: int, run_as: str | None, settings: str) -> None:
        self.bindir, self.root, self.port, self.run_as, self.settings = bindir, root, port, run_as, settings
        self.data = root / "data"
        self.log = root / "server.log"

    @classmethod
    def start(cls, root: Path, durable: bool = False) -> "LocalPostgres":
        """Initialize and start a server in the folder ``root`` (created if needed, then owned by the server's
        user; its parent must let that user through, as /tmp does). ``durable``
        keeps PostgreSQL's default fsync settings (benchmarks); tests run without them."""
        bindir = find_bindir()
        run_as = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root, and there is no 'postgres' system user to run the server as "
                                  "(PostgreSQL refuses root)") from None
            run_as = "postgres"
        root.mkdir(parents=True, exist_ok=True)
        if run_as:
            shutil.chown(root, run_as, run_as)
        server = cls(bindir, root, free_port(), run_as, "" if durable else FAST[0])
        server._run("initdb", "-D", str(server.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C",
                    "--no-sync")
        server.up()
        return server

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise Unavailable(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-1000:]} {log}")

    def up(self) -> None:
        """Start the server (again, after :meth:`down`) on its port, loopback only, no Unix socket."""
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
                   f"-c max_connections=200 {self.settings}")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def down(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every connection (clients see the database vanish)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement on the maintenance database, outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop the server at once and delete its files."""
        try:
            self.down("immediate")
        except Unavailable:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


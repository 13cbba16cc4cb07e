"""A throwaway PostgreSQL cluster for the tests marked ``postgres``.

One cluster per test session (``pg_cluster``), in a temporary folder, listening on
127.0.0.1 on a free port with trust authentication, fsync off. As root (CI), ``initdb``
and ``pg_ctl`` run as the ``postgres`` user through ``runuser``. At the end of the
session the server is stopped by its PID and the folder removed. ``pg_dsn`` gives each
test a database of its own.

The server binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/N/bin``)
or ``$PG_BINDIR``. If they are missing the fixture fails: ``./dev.sh test`` (as root)
installs the package.

Import the fixtures into a test module: ``from testkit.pgserver import pg_cluster, pg_dsn``.
Use them from one module only (a session fixture imported into two modules is two
fixtures, so two clusters).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from testkit.sipp import free_port, stop_foreign_pid

_db_numbers = itertools.count(1)


def _bindir() -> str | None:
    env = os.environ.get("PG_BINDIR")
    if env and os.path.exists(os.path.join(env, "pg_ctl")):
        return env

    def version(path: str) -> tuple[int, ...]:
        part = path.split("/")[-3]
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=version)
    if found:
        return os.path.dirname(found[-1])
    which = shutil.which("pg_ctl")
    return os.path.dirname(which) if which else None


@dataclass
class PgCluster:
    bindir: str
    root: str
    port: int
    as_postgres: bool

    @property
    def datadir(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def logfile(self) -> str:
        return os.path.join(self.root, "server.log")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        prog = [os.path.join(self.bindir, args[0]), *args[1:]]
        return ["runuser", "-u", "postgres", "--", *prog] if self.as_postgres else prog

    def _run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            log = ""
            with contextlib.suppress(OSError), open(self.logfile) as f:
                log = f.read()[-3000:]
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n{log}"
            )
        return proc.stdout

    def initdb(self) -> None:
        self._run(
            "initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-locale", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        opts = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -F"
            " -c max_connections=50 -c shared_buffers=16MB -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "-o", opts, "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast``: the database goes away under a running test."""
        self._run("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return self.pid() is not None

    def pid(self) -> int | None:
        try:
            with open(os.path.join(self.datadir, "postmaster.pid")) as f:
                pid = int(f.readline().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def kill(self) -> None:
        """Stop the server by its PID (fast shutdown) and wait for it to go."""
        pid = self.pid()
        if pid is None:
            return
        stop_foreign_pid(pid, signal.SIGINT)  # fast shutdown

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                os.path.join(self.bindir, "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                "-c", sql,
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {out.stderr}")
        return out.stdout.strip()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bindir = _bindir()
    if bindir is None or not os.path.exists(os.path.join(bindir, "initdb")):
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: the postgres tests need "
            "Debian's postgresql package. Run ./dev.sh test as root, which installs it.",
            pytrace=False,
        )
    as_postgres = os.geteuid() == 0
    root = tempfile.mkdtemp(prefix="sipguard-pg-")
    if as_postgres:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root but there is no postgres user; run ./dev.sh test")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    cluster = PgCluster(bindir=bindir, root=root, port=free_port(), as_postgres=as_postgres)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        cluster.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    """A fresh database for one test, on the session's cluster (restarted if a test left
    it stopped)."""
    if not pg_cluster.running():
        pg_cluster.start()
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    pg_cluster.psql(f"CREATE DATABASE {name}")
    return pg_cluster.dsn(name)

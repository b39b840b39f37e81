"""
A real PostgreSQL server for the tests, from Debian's packages, in a temporary data directory.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system
user that Debian's package creates (`runuser -u postgres --`); as anyone else it runs as
that user. It listens on a free port on 127.0.0.1 (password authentication, so the URLs
the tests use carry a password like a user's would) and on a unix socket in the temporary
directory, never in /var/run. Durability is switched off: the tests never survive a crash
of the machine, only of the server, which the page cache covers.
"""

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from tests.proxy import free_port

SERVICE_USER = "postgres"
SUPERUSER = "rerouter"
PASSWORD = "pg-test-Pa55word"
"""Tests check that this never shows up where a user could see it."""
START_TIMEOUT = 30


def find_bindir() -> Path | None:
    """Debian keeps initdb and pg_ctl out of PATH, under /usr/lib/postgresql/<version>/bin."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgServer:
    """One PostgreSQL server: start() once, then databases on demand; restart() and stopped() for fault tests."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="rerouter-pg-"))
        self.datadir = self.root / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, SERVICE_USER, SERVICE_USER)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / program), *args]
        if self.as_root:
            argv = ["runuser", "-u", SERVICE_USER, "--", *argv]
        result = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=START_TIMEOUT)
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD)
        if self.as_root:
            shutil.chown(pwfile, SERVICE_USER, SERVICE_USER)
        self._run(
            "initdb",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--username={SUPERUSER}",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            str(self.datadir),
        )
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "log_min_messages": "warning",
        }
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> "PgServer":
        if not self.datadir.exists():
            self._initdb()
        self._run("pg_ctl", "start", "--wait", f"--timeout={START_TIMEOUT}", "-D", str(self.datadir), "-l", str(self.root / "log"))
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends the sessions cleanly; `immediate` is a crash, as when the server's machine dies."""
        self._run("pg_ctl", "stop", "--wait", "-m", mode, "-D", str(self.datadir), check=False)

    def restart(self, down_for: float = 0.0, mode: str = "fast") -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    @contextlib.contextmanager
    def stopped(self, mode: str = "fast") -> Iterator[None]:
        """The server down for the block's duration, and up again after it whatever the block did."""
        self.stop(mode)
        try:
            yield
        finally:
            self.start()

    def is_running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.datadir), check=False).returncode == 0

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", password: str = PASSWORD) -> str:
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True, connect_timeout=10)

    def create_database(self) -> str:
        """A new empty database of the test's own; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text(errors="replace") if path.exists() else ""

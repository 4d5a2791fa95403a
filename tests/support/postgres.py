"""A real PostgreSQL 16 for tests, from the pgserver wheel's binaries, on a TCP port of its own.

pgserver's own helper serves a unix socket and stops the server when the Python process exits;
tests need more: a password in the URL (to check it never leaks), a TCP port that stays the same
across a stop and a start (faults), and stop/start on demand. So this drives initdb and pg_ctl
itself. As root (CI, these machines), PostgreSQL refuses to run: it runs as pgserver's own
unprivileged user, created if missing, as pgserver does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pgserver
from pgserver.utils import ensure_user_exists

from tests.support.harness import free_port

BIN = Path(pgserver.__file__).parent / "pginstall" / "bin"
USER = "sidecar"
PASSWORD = "s3cret-pg-pass"  # tests assert that this never shows up anywhere
SYSTEM_USER = "pgserver"


class Postgres:
    """One PostgreSQL cluster in a temporary directory: ``start()``, ``stop()``, ``url(db)``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            ensure_user_exists(SYSTEM_USER)
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid}
        self._initdb()

    def _run(self, *args: str | Path) -> None:
        subprocess.run([str(a) for a in args], check=True, capture_output=True, cwd=self.root, **self._as)

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        self._run(BIN / "initdb", "-D", self.data, "-U", USER, "--pwfile", pwfile, "--auth=scram-sha-256",
                  "--no-sync", "-E", "UTF8")
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:  # a test server: speed, room for a fleet
            conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
            conf.write("max_connections = 300\n")

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root}"
        self._run(BIN / "pg_ctl", "-D", self.data, "-l", self.root / "log", "-o", options, "-w", "-t", "30",
                  "start")

    def stop(self) -> None:
        """A fast shutdown: every connection is cut, as in an outage."""
        self._run(BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

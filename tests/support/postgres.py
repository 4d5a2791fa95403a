"""A real PostgreSQL 16 for tests, from the pgserver wheel's binaries, on a TCP port of its own.

pgserver's own helper serves a unix socket and stops the server when the Python process exits;
tests need more: a password in the URL (to check it never leaks), a TCP port that stays the same
across a stop and a start (faults), and stop/start on demand. So this drives initdb and pg_ctl
itself.

Who runs the server: PostgreSQL refuses to run as root. Not root (a developer), it runs as you, from
the wheel where it is. As root (CI, these machines) it runs as pgserver's unprivileged user, created
if missing, as pgserver does. That user may not be able to reach the wheel: a clone inside a 0700
directory (`mktemp -d`, /root) keeps it out of .venv. So as root the binaries, libraries and share
files are linked (or copied, across file systems) once per test process into a directory of their
own under the temporary directory, which that user can read; PostgreSQL finds lib/ and share/
beside its bin/. Nothing is skipped: when the server cannot start, the error says why.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pgserver
from pgserver.utils import ensure_user_exists

from tests.support.harness import free_port

INSTALL = Path(pgserver.__file__).parent / "pginstall"
USER = "sidecar"
PASSWORD = "s3cret-pg-pass"  # tests assert that this never shows up anywhere
SYSTEM_USER = "pgserver"


class PostgresError(RuntimeError):
    """PostgreSQL could not be set up or started; the message says why."""


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or hard links refused: a copy does as well
        shutil.copy2(source, target)


@functools.cache
def _reachable_install() -> Path:
    """pginstall's bin/, lib/ and share/ where any user can read them (see the module's docstring)."""
    base = Path(tempfile.gettempdir())
    closed = [str(p) for p in (base, *base.parents) if not os.stat(p).st_mode & stat.S_IXOTH]
    if closed:
        raise PostgresError(f"PostgreSQL runs as the user {SYSTEM_USER!r} when the tests run as root, and "
                            f"it cannot reach the temporary directory {base}: {closed} not searchable by "
                            "others. Set TMPDIR to a directory every user can reach (e.g. /tmp).")
    root = Path(tempfile.mkdtemp(prefix="sidecar-pgbin-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    # The wheel's layout, kept: the binaries find libpq by an rpath relative to themselves
    # ($ORIGIN/../../../pgserver.libs), and lib/ and share/ beside bin/.
    site = INSTALL.parent.parent
    parts = [INSTALL.relative_to(site) / part for part in ("bin", "lib", "share")]
    for part in [*parts, Path("pgserver.libs")]:
        shutil.copytree(site / part, root / part, symlinks=True, copy_function=_link_or_copy)
    root.chmod(0o755)  # mkdtemp makes it 0700; the files keep the wheel's own modes (world-readable)
    return root / parts[0]


def _system_user() -> pwd.struct_passwd:
    """The unprivileged user the server runs as when the tests run as root, created if missing."""
    try:
        entry = ensure_user_exists(SYSTEM_USER)
    except subprocess.CalledProcessError as error:
        try:  # another test process (a second suite on this machine) may just have created it
            return pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresError(f"PostgreSQL refuses to run as root, and creating the user {SYSTEM_USER!r} "
                                f"to run it failed: {error.stderr or error}") from None
    assert entry is not None
    return entry


class Postgres:
    """One PostgreSQL cluster in a temporary directory: ``start()``, ``stop()``, ``url(db)``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sidecar-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as: dict[str, Any] = {}
        self.bin = INSTALL / "bin"
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            entry = _system_user()
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid}
            self.bin = _reachable_install()
            self.user = SYSTEM_USER
        self._initdb()

    def _run(self, *args: str | Path) -> None:
        try:
            subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, cwd=self.root,
                           **self._as)
        except (OSError, subprocess.CalledProcessError) as error:
            raise PostgresError(self._why(args, error)) from None

    def _why(self, args: tuple[str | Path, ...], error: Exception) -> str:
        command = " ".join([Path(args[0]).name, *(str(a) for a in args[1:])])
        if isinstance(error, subprocess.CalledProcessError):
            said = f"exit {error.returncode}: {(error.stderr or '').strip()} {(error.stdout or '').strip()}"
        else:
            said = str(error)
        log = self.root / "log"
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\nserver log:\n" + "\n".join(log.read_text().splitlines()[-15:])
        who = f"running as {self.user!r} from {self.bin}"
        return f"PostgreSQL for the tests failed, {who}: {command}\n{said}{tail}"

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        self._run(self.bin / "initdb", "-D", self.data, "-U", USER, "--pwfile", pwfile,
                  "--auth=scram-sha-256", "--no-sync", "-E", "UTF8")
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:  # a test server: speed, room for a fleet
            conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
            conf.write("max_connections = 300\n")

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root}"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "log", "-o", options, "-w",
                  "-t", "30", "start")

    def stop(self) -> None:
        """A fast shutdown: every connection is cut, as in an outage."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

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
            with contextlib.suppress(PostgresError):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

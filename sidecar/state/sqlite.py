"""``sqlite:///absolute/path/state.db``: one sidecar, or several processes on one host; survives restarts.

The stdlib's sqlite3, on one thread of its own per process (the connection never changes threads,
and the event loop never blocks on the file). Each operation is one ``BEGIN IMMEDIATE`` transaction:
SQLite takes the database's write lock at its start, so a check-then-write (a rate-limit slot, a
first result) is atomic across processes; WAL lets reads go on meanwhile, and ``busy_timeout``
makes a process wait its turn rather than fail.

The single-flight lock is an flock(2) on a lock file beside the database: the kernel drops it when
its holder's process dies, however it dies, and it never blocks the database for others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StoreError
from . import sql
from .base import ContactRecord, SlotDecision, StoredResult
from .url import sqlite_path

log = logging.getLogger("sidecar.state")
Q = sql.queries("sqlite")
T = TypeVar("T")
LOCK_FILES = 256  # lock files per database: keys share them by hash (a rare, harmless wait)
LOCK_POLL_SECONDS = 0.02
BUSY_TIMEOUT_MS = 10_000
WAL_TRIES, WAL_RETRY_SECONDS = 100, 0.05


class SqliteState:
    scheme = "sqlite"
    shared = True  # other processes on the host may use the same file

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.path = Path(sqlite_path(url))
        self.lock_dir = self.path.with_name(self.path.name + ".locks")
        self._key_locks: dict[str, list[Any]] = {}  # key -> [asyncio.Lock, users]
        self._buckets: dict[int, list[int]] = {}  # lock file -> [fd, holders in this process]
        self._clock = clock
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sidecar-sqlite")
        self._conn: sqlite3.Connection | None = None
        # Reads that may come often and in numbers (the queue's watchers and listings) on a connection
        # and thread of their own: a deferred read transaction in WAL mode takes no write lock and never
        # waits for one, and they do not queue behind the writes on the store's thread.
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="sidecar-sqlite-read")
        self._read_conn: sqlite3.Connection | None = None
        self._migrated = False

    # --- the store's thread ------------------------------------------------------------------------

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in the store's thread, inside one BEGIN IMMEDIATE transaction."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, self._transaction, work)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"the store ({self.url}) is unavailable: {type(exc).__name__} ({exc})") from None

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return result

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in the reading thread, inside one read-only (deferred) transaction:
        a snapshot that neither takes nor waits for SQLite's write lock."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._read_thread, self._read_transaction, work)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"the store ({self.url}) is unavailable: {type(exc).__name__} ({exc})") from None

    def _read_transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA query_only = ON")  # a write here is a bug: refused, never locked
            self._read_conn = conn
        self._read_conn.execute("BEGIN DEFERRED")
        try:
            return work(self._read_conn)
        finally:
            self._read_conn.rollback()  # nothing to keep: ends the snapshot

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # The file holds names and e-mails: created 0600 before SQLite opens it (SQLite would make
            # it 0644 under the usual umask; its -wal and -shm files take the database file's mode).
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            # isolation_level=None: no implicit transactions; each operation opens its own above.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _wal(conn)
            # FULL: a commit is on disk when it returns. The queue's Enqueue answers only after a durable
            # commit (issue 12); NORMAL could lose the last commits to a power cut, never to a crash.
            conn.execute("PRAGMA synchronous = FULL")
            self._conn = conn
        return self._conn

    # --- life cycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._migrated:
            await self.migrate("state", sql.migrations("sqlite"))
            self.lock_dir.mkdir(mode=0o700, exist_ok=True)
            self._migrated = True

    async def migrate(self, component: str, steps: list[str]) -> None:
        """The steps this file lacks, in one BEGIN IMMEDIATE transaction: concurrent starts queue."""

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute(Q["schema_table"])
            row = conn.execute(Q["schema_version"], {"component": component}).fetchone()
            version = row[0] if row else 0
            for number, step in enumerate(steps[version:], start=version + 1):
                for statement in _statements(step):
                    conn.execute(statement)
                log.info("store schema migrated", extra={"fields": {"component": component, "to": number}})
            if len(steps) > version:
                conn.execute(Q["set_schema_version"], {"component": component, "version": len(steps)})

        await self.run(apply)

    async def ping(self) -> None:
        await self.start()
        await self.run(lambda conn: conn.execute(Q["ping"]).fetchone())

    async def aclose(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        def close_reads() -> None:
            if self._read_conn is not None:
                self._read_conn.close()
                self._read_conn = None

        with contextlib.suppress(RuntimeError):  # the executor may be gone already
            await asyncio.get_running_loop().run_in_executor(self._thread, close)
        with contextlib.suppress(RuntimeError):
            await asyncio.get_running_loop().run_in_executor(self._read_thread, close_reads)
        self._thread.shutdown(wait=False)
        self._read_thread.shutdown(wait=False)

    async def _one(self, name: str, params: dict[str, Any]) -> Any:
        await self.start()
        now = self._clock()
        return await self.run(lambda conn: conn.execute(Q[name], {"now": now, **params}).fetchone())

    # --- rate slots -------------------------------------------------------------------------------

    async def acquire_slot(self, key: str, limit: int, window: float) -> SlotDecision:
        await self.start()
        now = self._clock()

        def take(conn: sqlite3.Connection) -> SlotDecision:
            params = {"key": key, "now": now, "window": window}
            held = conn.execute(Q["slot_held"], params).fetchone()
            if held and held[0] > now:
                return SlotDecision(held[0] - now, held=True)
            conn.execute(Q["slot_trim"], params)
            n, oldest = conn.execute(Q["slot_count"], params).fetchone()
            if n >= limit:
                return SlotDecision(max(oldest + window - now, 0.001))
            conn.execute(Q["slot_take"], params)
            return SlotDecision(0.0, at=now)

        return await self.run(take)

    async def hold_slots(self, key: str, seconds: float) -> None:
        await self._one("slot_hold", {"key": key, "seconds": seconds})

    async def slot_answered(self, key: str, at: float, earlier_by: float = 0.0) -> None:
        await self._one("slot_answered", {"key": key, "at": at, "earlier_by": earlier_by})

    # --- contacts ---------------------------------------------------------------------------------

    async def get_contact(self, key: str) -> ContactRecord | None:
        row = await self._one("get_contact", {"key": key})
        return ContactRecord(int(row[0]), row[1]) if row else None

    async def put_contact(self, key: str, record: ContactRecord, ttl: float) -> None:
        await self._one("put_contact", {"key": key, "contact_id": record.contact_id, "name": record.name,
                                        "ttl": ttl})

    async def discard_contact(self, key: str) -> None:
        await self._one("discard_contact", {"key": key})

    # --- results ------------------------------------------------------------------------------------

    async def get_result(self, key: str) -> StoredResult | None:
        row = await self._one("get_result", {"key": key})
        if not row:
            return None
        data = json.loads(row[0])
        return StoredResult(data.get("outcome"), data.get("error"))

    async def put_result(self, key: str, result: StoredResult, ttl: float) -> None:
        body = json.dumps({"outcome": result.outcome, "error": result.error})
        await self._one("put_result", {"key": key, "result": body, "ttl": ttl})

    async def discard_result(self, key: str) -> None:
        await self._one("discard_result", {"key": key})

    # --- locks --------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def flight_lock(self, key: str, *, outer: bool = False) -> AsyncIterator[None]:
        await self.start()
        bucket = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % LOCK_FILES
        # In this process one holder per key (an asyncio lock); across processes one per lock file.
        # Keys share the files by hash, so a person's lock taken under a message_id's can hash to the
        # file this process already holds: it shares that hold rather than wait on itself for ever.
        entry = self._key_locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                await self._hold_bucket(bucket)
                try:
                    yield
                finally:
                    self._release_bucket(bucket)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._key_locks.pop(key, None)

    async def _hold_bucket(self, bucket: int) -> None:
        if bucket in self._buckets:
            self._buckets[bucket][1] += 1
            return
        try:
            fd = os.open(self.lock_dir / f"{bucket:03d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"the store ({self.url}) is unavailable: {type(exc).__name__} ({exc})") from None
        try:
            # Polled (LOCK_NB): a waiter whose deadline runs out simply stops. Another holder of this
            # process may take the file meanwhile: then this one shares its hold.
            while not _try_flock(fd):
                if bucket in self._buckets:
                    os.close(fd)
                    self._buckets[bucket][1] += 1
                    return
                await asyncio.sleep(LOCK_POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        self._buckets[bucket] = [fd, 1]

    def _release_bucket(self, bucket: int) -> None:
        held = self._buckets[bucket]
        held[1] -= 1
        if held[1] == 0:
            del self._buckets[bucket]
            os.close(held[0])  # closing drops the lock

    async def prune(self, window: float) -> None:
        for name in ("prune_contacts", "prune_results", "prune_rate_log"):
            await self._one(name, {"window": window})


def _wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL (it stays so). The switch needs the file to itself and, unlike other
    statements, may answer "database is locked" without waiting busy_timeout: several processes
    opening one new file at once retry it here for a while."""
    for _ in range(WAL_TRIES - 1):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(WAL_RETRY_SECONDS)
    conn.execute("PRAGMA journal_mode = WAL")


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _statements(script: str) -> list[str]:
    """A migration step's statements (sqlite3 runs one per execute; executescript would commit)."""
    return [s.strip() for s in script.split(";") if s.strip() and not s.strip().startswith("--")]

"""``postgresql://`` (or ``postgres://``): the state shared by any number of sidecars.

Why psycopg 3 with psycopg_pool rather than asyncpg: psycopg is libpq, so the URL means exactly what
it means to psql and every other PostgreSQL tool (``sslmode``, ``sslrootcert``, ``options``,
``target_session_attrs``, service files, PG* environment variables); asyncpg parses URLs itself and
knows a subset. psycopg_pool reconnects by itself when the server comes back, and both are kept by
the PostgreSQL driver's own maintainers.

Every operation is one short transaction on a pooled connection. The single-flight lock is a
transaction-scoped advisory lock: it dies with its holder's connection, it needs no table, and it
works through PgBouncer in transaction mode (session-scoped locks would not).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import StoreError
from . import sql
from .base import ContactRecord, SlotDecision, StoredResult
from .url import describe, guard_logs

log = logging.getLogger("sidecar.state")
Q = sql.queries("postgres")
MIGRATE_LOCK = "trengo-sidecar:migrate"
LOCK_POLL_SECONDS = 0.02  # how often a waiter tries an advisory lock held elsewhere
# How long an operation waits for a pooled connection. Operations are short, so a longer wait means
# the server is unreachable: a StoreError, which the caller retries within its deadline.
CONNECTION_WAIT_SECONDS = 1.0
# After an outage. psycopg_pool retries a lost connection with a doubling backoff (1, 2, 4... s), so
# once the server was back the pools reopened connections only at their next try, seconds later, and
# the first callers spent their deadline waiting for a connection (the fleet test's calls right after
# PostgreSQL returned answered TRENGO_UNAVAILABLE). So the pools give up retrying after this long (the
# reconnect_failed hook), and the state watches the server itself, in the background.
RECONNECT_GIVE_UP_SECONDS = 0.5
RECOVER_POLL_SECONDS = 0.2  # how often the background watch tries the server while it is down


def lock_id(key: str) -> int:
    """A signed 64-bit advisory lock number for ``key``."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


class PostgresState:
    scheme = "postgresql"
    shared = True

    def __init__(
        self, url: str, *, clock: Callable[[], float] | None = None, pool_size: int = 4,
        connect_timeout: float = 5.0,
    ) -> None:
        guard_logs(url)  # psycopg and psycopg_pool log on their own: their records are redacted too
        self.url = describe(url)  # host:port/db, all an error ever names
        self._clock = clock  # None: the server's clock
        self._migrated = False
        self._migrating = asyncio.Lock()
        self._connect_timeout = connect_timeout
        self._conninfo = url  # for the watch after an outage (_recover); never logged
        self._recovering: asyncio.Task[None] | None = None
        self.pool = self._pool(url, "sidecar-state", 1, pool_size)
        # A held flight lock keeps its connection for as long as the block runs (Trengo calls included);
        # on the pool the block's own operations use, a full set of holders would wait on itself.
        # Outer (message_id) and inner (person) locks each have a pool, idle-free when unused.
        self._lock_pools = {
            outer: self._pool(url, f"sidecar-locks-{'outer' if outer else 'inner'}", 0, pool_size)
            for outer in (True, False)
        }
        self._opened = False
        self.reachable = True  # as far as the latest operation knows

    def _pool(self, url: str, name: str, min_size: int, max_size: int) -> AsyncConnectionPool:
        # open=False: opened in start(). A sidecar started while the store is down recovers by itself
        # when it comes back (the pools' own retries, then _recover). libpq takes postgres:// and
        # postgresql:// alike: the URL goes to it unchanged.
        return AsyncConnectionPool(
            url, min_size=min_size, max_size=max(max_size, 1), open=False, timeout=self._connect_timeout,
            reconnect_timeout=RECONNECT_GIVE_UP_SECONDS, reconnect_failed=self._reconnect_failed, name=name,
            # autocommit: a one-statement operation is one round trip; the others open a transaction.
            # psycopg prepares a statement run five times: without that, a Track with a message_id took
            # 3.4 ms more on the store instead of 1.0 ms. Through PgBouncer in transaction mode this needs
            # PgBouncer 1.21 or later with max_prepared_statements set (docs/replicas.md).
            kwargs={"connect_timeout": self._libpq_timeout(), "autocommit": True},
        )

    def _libpq_timeout(self) -> int:
        return max(1, int(self._connect_timeout))

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._ready()

    async def _ready(self) -> None:
        """Open the pools (once; they connect in the background) and migrate (until it has worked)."""
        if self._migrated:
            return
        if not self._opened:
            for pool in (self.pool, *self._lock_pools.values()):
                await pool.open(wait=False)
            self._opened = True
        async with self._migrating:
            if not self._migrated:
                await self.migrate("state", sql.migrations("postgres"))
                self._migrated = True

    async def migrate(self, component: str, steps: list[str]) -> None:
        """Apply the steps this database lacks, under one advisory lock, so concurrent starts wait."""
        async with self._connection() as conn:
            await conn.execute(Q["schema_lock"], {"lock": lock_id(MIGRATE_LOCK)})
            await conn.execute(Q["schema_table"])
            row = await (await conn.execute(Q["schema_version"], {"component": component})).fetchone()
            version = row[0] if row else 0
            for number, step in enumerate(steps[version:], start=version + 1):
                await conn.execute(step)
                log.info("store schema migrated", extra={"fields": {"component": component, "to": number}})
            if len(steps) > version:
                await conn.execute(Q["set_schema_version"], {"component": component, "version": len(steps)})

    async def ping(self) -> None:
        await self._ready()
        async with self._connection(transaction=False) as conn:
            await conn.execute(Q["ping"])

    async def aclose(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovering
        if self._opened:
            for pool in (self.pool, *self._lock_pools.values()):
                await pool.close(timeout=1.0)

    @contextlib.asynccontextmanager
    async def _connection(
        self, pool: AsyncConnectionPool | None = None, *, transaction: bool = True
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; with ``transaction`` the block runs in one (committed at its end),
        else each statement commits by itself (one round trip, not three); every driver error leaves
        as StoreError."""
        self._fail_while_down()
        # PoolTimeout is a psycopg.OperationalError too.
        pooled = (pool or self.pool).connection(CONNECTION_WAIT_SECONDS)
        try:
            async with _wrapped(self.url), pooled as conn:
                if not transaction:
                    yield conn
                else:
                    async with conn.transaction():
                        yield conn
        except StoreError:
            self._lost()
            raise
        self.reachable = True

    # --- after an outage ---------------------------------------------------------------------------

    def _reconnect_failed(self, pool: AsyncConnectionPool) -> None:
        """psycopg_pool's hook: a pool stopped retrying a connection (RECONNECT_GIVE_UP_SECONDS)."""
        self._lost()

    def _fail_while_down(self) -> None:
        """While the background watch waits for the server, fail at once rather than wait out a pool
        timeout: under a short deadline that wait used to eat the time left to say why (a call gave
        up as "busy" instead of STORE_UNAVAILABLE). Callers retry within their deadline
        (state/waiting.py), and the watch marks the store reachable once its pools are ready."""
        if not self.reachable and self._recovering is not None and not self._recovering.done():
            raise StoreError(f"the store ({self.url}) is unavailable: waiting for it to answer again")

    def _lost(self) -> None:
        """The server did not answer: watch for its return in the background (once at a time)."""
        self.reachable = False
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        """Try the server every RECOVER_POLL_SECONDS; once it answers, have each pool check its
        connections (the dead ones are dropped and replaced at once) and open one ready connection, so
        the first callers after the outage find the pools ready instead of paying for the reconnect."""
        while True:
            try:
                timeout = self._libpq_timeout()
                probe = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=timeout)
                await probe.close()
                break
            except (psycopg.Error, OSError):
                await asyncio.sleep(RECOVER_POLL_SECONDS)
        for pool in (self.pool, *self._lock_pools.values()):
            with contextlib.suppress(psycopg.Error, OSError):
                await pool.check()
                async with pool.connection(CONNECTION_WAIT_SECONDS):
                    pass
        self.reachable = True
        log.info("store connections reopened after an outage", extra={"fields": {"store": self.url}})

    async def _fetch(self, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """One statement, which commits by itself."""
        await self._ready()
        async with self._connection(transaction=False) as conn:
            cursor = await conn.execute(Q[name], {"now": self._now(), **params})
            return await cursor.fetchone() if cursor.description else None

    # --- rate slots ------------------------------------------------------------------------------

    async def acquire_slot(self, key: str, limit: int, window: float) -> SlotDecision:
        # One statement (sql/postgres.sql, sidecar_acquire_slot): it locks the token's row, so
        # acquiring is serialised per token across the fleet, and commits by itself.
        params = {"key": key, "limit": limit, "window": float(window)}
        wait, held, at = await self._fetch("acquire_slot", params)  # type: ignore[misc]
        return SlotDecision(float(wait), held=bool(held), at=None if at is None else float(at))

    async def hold_slots(self, key: str, seconds: float) -> None:
        await self._fetch("slot_hold", {"key": key, "seconds": float(seconds)})

    async def slot_answered(self, key: str, at: float, earlier_by: float = 0.0) -> None:
        await self._fetch("slot_answered", {"key": key, "at": float(at), "earlier_by": float(earlier_by)})

    # --- contacts --------------------------------------------------------------------------------

    async def get_contact(self, key: str) -> ContactRecord | None:
        row = await self._fetch("get_contact", {"key": key})
        return ContactRecord(int(row[0]), row[1]) if row else None

    async def put_contact(self, key: str, record: ContactRecord, ttl: float) -> None:
        params = {"key": key, "contact_id": record.contact_id, "name": record.name, "ttl": float(ttl)}
        await self._fetch("put_contact", params)

    async def discard_contact(self, key: str) -> None:
        await self._fetch("discard_contact", {"key": key})

    # --- results ---------------------------------------------------------------------------------

    async def get_result(self, key: str) -> StoredResult | None:
        row = await self._fetch("get_result", {"key": key})
        if not row:
            return None
        data = row[0] if isinstance(row[0], dict) else json.loads(row[0])
        return StoredResult(data.get("outcome"), data.get("error"))

    async def put_result(self, key: str, result: StoredResult, ttl: float) -> None:
        body = Jsonb({"outcome": result.outcome, "error": result.error})
        await self._fetch("put_result", {"key": key, "result": body, "ttl": float(ttl)})

    async def discard_result(self, key: str) -> None:
        await self._fetch("discard_result", {"key": key})

    # --- locks -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def flight_lock(self, key: str, *, outer: bool = False) -> AsyncIterator[None]:
        await self._ready()
        pool = self._lock_pools[outer]
        conn = await self._lock_connection(pool)
        try:
            # One transaction: the lock lives as long as the block.
            async with _wrapped(self.url), conn.transaction():
                lock = {"lock": lock_id("flight:" + key)}
                # Polled rather than pg_advisory_xact_lock: a waiter whose deadline runs out simply
                # stops, with no query to cancel on the server.
                while not (await (await conn.execute(Q["try_lock"], lock)).fetchone())[0]:  # type: ignore[index]
                    await asyncio.sleep(LOCK_POLL_SECONDS)
                yield
        finally:
            await pool.putconn(conn)

    async def _lock_connection(self, pool: AsyncConnectionPool) -> psycopg.AsyncConnection[Any]:
        """A connection for a lock: other holders may keep every one for a while (a slow Trengo), so
        this waits as long as the caller's deadline allows, unless the server turns out unreachable."""
        while True:
            self._fail_while_down()
            try:
                return await pool.getconn(CONNECTION_WAIT_SECONDS)
            except PoolTimeout:
                if not self.reachable:
                    raise StoreError(f"the store ({self.url}) is unavailable: no connection") from None
                await self.ping()  # raises StoreError when the server is gone

    async def prune(self, window: float) -> None:
        """Delete what has expired (run now and then; reads ignore expired rows anyway)."""
        for name in ("prune_contacts", "prune_results", "prune_rate_log"):
            await self._fetch(name, {"window": float(window)})


@contextlib.asynccontextmanager
async def _wrapped(url: str) -> AsyncIterator[None]:
    """Driver errors of the block leave as StoreError."""
    try:
        yield
    except psycopg.Error as exc:
        raise StoreError(f"the store ({url}) is unavailable: {_why(exc, url)}") from None
    except OSError as exc:
        raise StoreError(f"the store ({url}) is unavailable: {type(exc).__name__}") from None


def _why(exc: BaseException, masked_url: str) -> str:
    """The driver's reason, first line only; libpq never quotes a password, but a DSN it echoes back
    could hold one, so anything that looks like a conninfo is dropped."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if "password=" in text or "://" in text:
        text = ""
    return f"{type(exc).__name__}" + (f" ({text[:200]})" if text else "")

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
from psycopg_pool import AsyncConnectionPool

from ..errors import StoreError
from . import sql
from .base import ContactRecord, SlotDecision, StoredResult
from .url import mask_url

log = logging.getLogger("sidecar.state")
Q = sql.queries("postgres")
MIGRATE_LOCK = "trengo-sidecar:migrate"
LOCK_POLL_SECONDS = 0.02  # how often a waiter tries an advisory lock held elsewhere


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
        self.url = mask_url(url)
        self._clock = clock  # None: the server's clock
        self._migrated = False
        self._migrating = asyncio.Lock()
        # open=False: opened in start(); the pool keeps (re)connecting in the background, so a sidecar
        # started while the store is down recovers by itself when it comes back.
        self.pool = AsyncConnectionPool(
            _libpq(url), min_size=1, max_size=max(pool_size, 1), open=False,
            timeout=connect_timeout, reconnect_timeout=float("inf"), name="sidecar-state",
            kwargs={"connect_timeout": max(1, int(connect_timeout))},
        )
        self._opened = False

    def _now(self) -> float | None:
        return self._clock() if self._clock is not None else None

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._opened:
            await self.pool.open(wait=False)
            self._opened = True
        await self._ready()

    async def _ready(self) -> None:
        if self._migrated:
            return
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
        async with self._connection() as conn:
            await conn.execute(Q["ping"])

    async def aclose(self) -> None:
        if self._opened:
            await self.pool.close(timeout=1.0)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; the block runs in one transaction (committed at its end); every
        driver error leaves as StoreError."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.Error as exc:  # PoolTimeout is an OperationalError too
            raise StoreError(f"the store {self.url} is unavailable: {_why(exc, self.url)}") from None
        except OSError as exc:
            raise StoreError(f"the store {self.url} is unavailable: {type(exc).__name__}") from None

    async def _fetch(self, name: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        await self._ready()
        async with self._connection() as conn:
            cursor = await conn.execute(Q[name], {"now": self._now(), **params})
            return await cursor.fetchone() if cursor.description else None

    # --- rate slots ------------------------------------------------------------------------------

    async def acquire_slot(self, key: str, limit: int, window: float) -> SlotDecision:
        await self._ready()
        async with self._connection() as conn:
            cursor = await conn.execute(Q["slot_lock"], {"key": key, "now": self._now()})
            held_until, now = await cursor.fetchone()  # type: ignore[misc]
            if held_until > now:
                return SlotDecision(held_until - now, held=True)
            params = {"key": key, "now": now, "window": float(window), "limit": limit}
            _, oldest, taken = await (await conn.execute(Q["slot_take"], params)).fetchone()  # type: ignore[misc]
        if taken:
            return SlotDecision(0.0)
        return SlotDecision(max(oldest + window - now, 0.001))

    async def hold_slots(self, key: str, seconds: float) -> None:
        await self._fetch("slot_hold", {"key": key, "seconds": float(seconds)})

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

    # --- locks -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def flight_lock(self, key: str) -> AsyncIterator[None]:
        await self._ready()
        async with self._connection() as conn:  # one transaction: the lock lives as long as the block
            lock = {"lock": lock_id("flight:" + key)}
            # Polled rather than pg_advisory_xact_lock: a waiter whose deadline runs out simply stops,
            # with no query to cancel on the server.
            while not (await (await conn.execute(Q["try_lock"], lock)).fetchone())[0]:  # type: ignore[index]
                await asyncio.sleep(LOCK_POLL_SECONDS)
            yield

    async def prune(self, window: float) -> None:
        """Delete what has expired (run now and then; reads ignore expired rows anyway)."""
        for name in ("prune_contacts", "prune_results", "prune_rate_log"):
            await self._fetch(name, {"window": float(window)})


def _libpq(url: str) -> str:
    """libpq takes postgres:// and postgresql:// alike; the URL goes to it unchanged."""
    return url


def _why(exc: BaseException, masked_url: str) -> str:
    """The driver's reason, first line only; libpq never quotes a password, but a DSN it echoes back
    could hold one, so anything that looks like a conninfo is dropped."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if "password=" in text or "://" in text:
        text = ""
    return f"{type(exc).__name__}" + (f" ({text[:200]})" if text else "")

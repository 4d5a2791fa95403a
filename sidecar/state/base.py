"""The state a sidecar keeps, as small Protocols: one atomic operation per need.

Every backend (memory, SQLite, PostgreSQL) implements all of them, and the
delivery logic talks only to these. Times are wall-clock seconds (Unix time)
on the store's clock, so an expiry means the same to every sidecar sharing
the store and after a restart; ``ttl`` arguments are seconds from "now".
A backend raises only StoreError (errors.py) for its driver's failures.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """A Trengo contact as found or written: its id and the name it has, as far as we know it."""

    contact_id: int
    name: str | None = None


@dataclass(frozen=True, slots=True)
class StoredResult:
    """The result of one message_id, as data (JSON-able), never a live object.

    ``outcome``: the Outcome's fields (without its calls) when the delivery succeeded;
    ``error``: the SidecarError's class name, code, reason, message and retry_after when it ended in an
    error worth giving back again (TRENGO_OUTCOME_UNKNOWN).
    """

    outcome: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class SlotDecision:
    """What acquiring a rate-limit slot gave: ``wait`` 0 means the slot was taken (and logged).

    ``held``: the wait comes from a hold set after Trengo's 429 (Retry-After), not from the log being full.
    ``at``: when a slot was taken, its time in the log (for ``slot_answered``).
    """

    wait: float = 0.0
    held: bool = False
    at: float | None = None


class RateSlots(Protocol):
    async def acquire_slot(self, key: str, limit: int, window: float) -> SlotDecision:
        """Atomically, for ``key`` (a hash of the token, never the token): if no hold is in force and
        fewer than ``limit`` sends are logged in the last ``window`` seconds, log one now and answer
        wait 0; otherwise log nothing and answer how long until one may free up. An exact sliding log,
        on the store's clock: the cap holds across every sidecar on the store."""
        ...

    async def hold_slots(self, key: str, seconds: float) -> None:
        """Atomically: no slot for ``key`` until now + ``seconds`` (extends a hold, never shortens one)."""
        ...

    async def slot_answered(self, key: str, at: float, earlier_by: float = 0.0) -> None:
        """The call logged at ``at`` was answered: its entry moves to now minus ``earlier_by`` (never
        earlier than it was), so it counts for a window from a time no earlier than its arrival at
        Trengo (the limiter passes its margin: an answered call needs none). An entry gone already
        (its window over) is left alone."""
        ...


class ContactStore(Protocol):
    async def get_contact(self, key: str) -> ContactRecord | None:
        """The live record for ``key`` (an identifier's cache key), or None (absent or expired)."""
        ...

    async def put_contact(self, key: str, record: ContactRecord, ttl: float) -> None:
        """Store (replace) the record; it expires ``ttl`` seconds from now."""
        ...

    async def discard_contact(self, key: str) -> None:
        """Forget the record, for every sidecar (Trengo said 404/422 for it)."""
        ...


class FlightLocks(Protocol):
    def flight_lock(self, key: str, *, outer: bool = False) -> AbstractAsyncContextManager[None]:
        """Hold the lock for ``key`` for the block: one holder at a time across every sidecar on the store.

        Waits until it is free (the caller bounds the wait with its deadline). The lock dies with its
        holder: a connection's transaction (PostgreSQL), a file lock (SQLite), the process (memory),
        never a lease that could expire while the holder still works.

        ``outer``: other locks may be taken inside this one (a message_id's, around a person's). A
        backend that spends a connection per held lock keeps outer and inner locks, and the other
        operations, on connections of their own, so a full set of holders can never wait on itself."""
        ...


class ResultStore(Protocol):
    async def get_result(self, key: str) -> StoredResult | None:
        """The live result stored for ``key`` (a message_id), or None."""
        ...

    async def put_result(self, key: str, result: StoredResult, ttl: float) -> None:
        """Store the result; it expires ``ttl`` seconds from now. An existing live one is kept
        (the first write wins: a message_id has one result)."""
        ...

    async def discard_result(self, key: str) -> None:
        """Forget the result for ``key``: a write's mark (idempotency.py), once the write is known not to
        have happened."""
        ...


class State(RateSlots, ContactStore, FlightLocks, ResultStore, Protocol):
    """One backend: all of the above, plus its life cycle."""

    scheme: str  # memory, sqlite, postgresql
    shared: bool  # True when other processes may share it (so the in-process caches are only a front)
    url: str  # for logs: the password masked

    async def start(self) -> None:
        """Connect and migrate; raises StoreError when the store is unreachable (the caller retries)."""
        ...

    async def ping(self) -> None:
        """A round trip to the store; raises StoreError when it is unreachable."""
        ...

    async def aclose(self) -> None: ...


class SqlBackend(Protocol):
    """What another module (the queue) needs to keep its own tables in the same database.

    PostgreSQL also has ``pool`` (a psycopg_pool.AsyncConnectionPool: ``async with state.pool.connection()``)
    and SQLite ``run(fn)`` (``fn(sqlite3.Connection)`` in the store's own thread, in one transaction):
    named queries of the module's own, loaded with ``sql.load_queries``, run there.
    """

    async def migrate(self, component: str, steps: list[str]) -> None:
        """Apply ``steps[version:]`` for ``component`` (each step one script), recording the new version;
        safe when many sidecars start at once (an advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite)."""
        ...

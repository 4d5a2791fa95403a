"""The queue on PostgreSQL, shared by every sidecar on the store (psycopg 3, async, over a pool).

Claims take rows with ``FOR UPDATE SKIP LOCKED`` (as procrastinate and
rudder-server's jobsdb do): two sidecars claiming at once never wait for each
other and never take the same row, and a row's own conditions are checked
again on its newest version, so a head another sidecar just took is skipped.
Times are the server's (``clock_timestamp()``), so leases mean the same on
every pod; tests may pass a clock instead.

Each change of state takes the next cursor from one counter row, whose
lock is held to commit: cursors are therefore visible in the order they were
given, so a watcher reading "after N" never skips one that commits late.
The worker's and the operator's changes take that lock last, after their
rows' locks, so two never wait on each other in a cycle. Acceptance takes
no cursor (it is not a change a watcher follows), so enqueues never queue
behind that lock; only an event refused at acceptance (the HTTP ingest's
failed-at-once) is a change, and takes one.

The limits (queueMaxDepth, queueMaxBytes) are checked against counters kept in
8 shard rows (``queue_held``): an enqueue adds its new rows to its
connection's shard last, holding that row's lock to commit, and sums all
shards. Within a shard this is exact (the next enqueue waits for the commit,
then sees it). Across shards a transaction cannot see what others have not
committed yet, so the bound may be passed by what at most 7 enqueues in flight
at that very moment carry (each at most one request: maxMessageBytes for
Enqueue, one HTTP body for the ingest). One global lock would make it exact but
would serialise every Enqueue of the fleet on one row.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from ..state.sql import load_queries
from .store import (
    DELIVERED,
    STATES,
    Change,
    Job,
    Limits,
    Listed,
    NewJob,
    Outcome,
    QueueError,
    RetryRefused,
    Stats,
    check_room,
    event_json,
    unknown_error,
)

T = TypeVar("T")
Q = load_queries(Path(__file__).parent / "sql" / "postgres.sql")
EXPIRED_MESSAGE = (
    "the sidecar delivering this event stopped after its write may have been sent; whether Trengo did it "
    "is unknown, so it is not sent again (retry it to resend)"
)


class PostgresQueue:
    """On the state's PostgreSQL backend: its pool (``state.pool``) and its migrations."""

    def __init__(
        self, state: Any, clock: Callable[[], float] | None = None, limits: Limits | None = None
    ) -> None:
        self.state = state
        self.pool = state.pool
        self.clock = clock  # None: the server's clock
        self.limits = limits or Limits()

    def _now(self) -> float | None:
        return None if self.clock is None else self.clock()

    async def _run(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                return await work(conn)
        except psycopg.Error as exc:  # PoolTimeout is one too
            # The class and SQLSTATE only: a driver's message can name the host, never our business.
            code = getattr(exc, "sqlstate", None) or ""
            raise QueueError(
                f"the queue's store ({self.state.url}) is unavailable: {type(exc).__name__} {code}".strip()
            ) from None

    async def open(self) -> None:
        await self.state.migrate("queue", [Q["migrate_1"], Q["migrate_2"], Q["migrate_3"], Q["migrate_4"]])

    async def close(self) -> None:
        """The pool belongs to whoever opened it."""

    async def enqueue(self, job: NewJob) -> bool:
        return (await self.enqueue_many([job]))[0]

    async def enqueue_many(self, jobs: list[NewJob]) -> list[bool]:
        async def insert(conn: psycopg.AsyncConnection[Any]) -> list[bool]:
            answers = [False] * len(jobs)
            seen: set[str] = set()  # twice in one batch: the second is the duplicate
            params = [self._params(job) for job in jobs]
            queued: list[int] = []
            for i, job in enumerate(jobs):
                if job.message_id in seen:
                    continue
                seen.add(job.message_id)
                if job.error is None:
                    queued.append(i)
                else:  # refused at acceptance (rare): one at a time, each logged as a change
                    answers[i] = await self._insert(conn, params[i], job)
            if len(queued) == 1:  # Enqueue's one event
                cursor = await conn.execute(Q["enqueue"], params[queued[0]])
                answers[queued[0]] = await cursor.fetchone() is not None
            elif queued:
                # One executemany: psycopg pipelines it, so a batch of 100 is not 100 round trips.
                cursor = conn.cursor()
                await cursor.executemany(Q["enqueue"], [params[i] for i in queued], returning=True)
                for n, i in enumerate(queued):
                    if n:
                        cursor.nextset()
                    answers[i] = await cursor.fetchone() is not None
            new = sum(answers)
            new_bytes = sum(p["bytes"] for p, fresh in zip(params, answers, strict=True) if fresh)
            if new:  # last: the shard's lock is held only from here to the commit
                cursor = await conn.execute(Q["add_held"], {"events": new, "bytes": new_bytes})
                held, held_bytes = await cursor.fetchone() or (0, 0)
                # QueueFull rolls the whole transaction back: nothing of the batch is written.
                check_room(held - new, held_bytes - new_bytes, new, new_bytes, self.limits)
            return answers

        return await self._run(insert)

    def _params(self, job: NewJob) -> dict[str, Any]:
        event = event_json(job.event)
        return {
            "message_id": job.message_id,
            "person": job.person,
            "event": event,
            "bytes": max(1, len(event.encode())),  # the stored bytes, as queueMaxBytes counts them
            "trace": Jsonb(job.trace) if job.trace else None,
            "now": self._now(),
        }

    async def _insert(self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any], job: NewJob) -> bool:
        """A job refused at acceptance: failed, with its cursor, logged as a change (enqueue_failed)."""
        cursor = await conn.execute(Q["enqueue_failed"], params | {"error": Jsonb(job.error)})
        return await cursor.fetchone() is not None

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[Job]:
        async def take(conn: psycopg.AsyncConnection[Any]) -> list[Job]:
            now = self._now()
            await self._settle_expired(conn, now)
            cursor = await conn.execute(Q["due_heads"], {"now": now, "limit": limit})
            ids = [row[0] for row in await cursor.fetchall()]
            if not ids:
                return []
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(Q["take"], {"ids": ids, "owner": owner, "lease": lease_seconds, "now": now})
            jobs = {job.id: job for job in map(_job, await cursor.fetchall())}
            return [jobs[i] for i in ids]

        return await self._run(take)

    async def _settle_expired(self, conn: psycopg.AsyncConnection[Any], now: float | None) -> None:
        cursor = await conn.execute(Q["expired"], {"now": now})
        for job_id, write_sent in await cursor.fetchall():
            if write_sent:
                error = Jsonb(unknown_error(EXPIRED_MESSAGE))
                await conn.execute(Q["expired_sent"], {"id": job_id, "error": error, "now": now})
            else:
                await conn.execute(Q["give_back"], {"id": job_id, "owner": None, "now": now})

    async def heartbeat(self, owner: str, ids: list[int], lease_seconds: float) -> None:
        async def beat(conn: psycopg.AsyncConnection[Any]) -> None:
            params = {"ids": ids, "owner": owner, "lease": lease_seconds, "now": self._now()}
            await conn.execute(Q["heartbeat"], params)

        if ids:
            await self._run(beat)

    async def mark_sending(self, owner: str, job_id: int) -> bool:
        async def mark(conn: psycopg.AsyncConnection[Any]) -> bool:
            cursor = await conn.execute(Q["mark_sending"], {"id": job_id, "owner": owner, "now": self._now()})
            return await cursor.fetchone() is not None

        return await self._run(mark)

    async def finish(self, owner: str, job_id: int, outcome: Outcome) -> bool:
        async def end(conn: psycopg.AsyncConnection[Any]) -> bool:
            cursor = await conn.execute(Q["held"], {"id": job_id, "owner": owner})
            if await cursor.fetchone() is None:
                return False
            if outcome.state == DELIVERED:  # an identify's waiting tracks: their rows before the counter
                await conn.execute(Q["wake_waiting"], {"id": job_id, "now": self._now()})
            await conn.execute(
                Q["finish"],
                {
                    "id": job_id,
                    "state": outcome.state,
                    "result": _jsonb(outcome.result),
                    "error": _jsonb(outcome.error),
                    "next": outcome.next_attempt_at or None,
                    "now": self._now(),
                },
            )
            if outcome.state == DELIVERED:  # after the row's and the counter's locks (no cycle)
                await conn.execute(Q["delivered_held"], {"id": job_id})
            return True

        return await self._run(end)

    async def release(self, owner: str, job_id: int) -> None:
        async def give_back(conn: psycopg.AsyncConnection[Any]) -> None:
            cursor = await conn.execute(Q["held"], {"id": job_id, "owner": owner})
            if await cursor.fetchone() is not None:  # its lock first, then the counter's (no cycle)
                await conn.execute(Q["give_back"], {"id": job_id, "owner": owner, "now": self._now()})

        await self._run(give_back)

    async def get(self, message_id: str) -> Job | None:
        async def read(conn: psycopg.AsyncConnection[Any]) -> Job | None:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(Q["get"], {"message_id": message_id})
            row = await cursor.fetchone()
            return None if row is None else _job(row)

        return await self._run(read)

    async def by_state(self, state: str, after_id: int, limit: int) -> list[Listed]:
        async def read(conn: psycopg.AsyncConnection[Any]) -> list[Listed]:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(Q["by_state"], {"state": state, "after": after_id, "limit": limit})
            return [_listed(row) for row in await cursor.fetchall()]

        return await self._run(read)

    async def changes(self, after_seq: int, limit: int) -> list[Change]:
        async def read(conn: psycopg.AsyncConnection[Any]) -> list[Change]:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(Q["changes"], {"after": after_seq, "limit": limit})
            return [_change(row) for row in await cursor.fetchall()]

        return await self._run(read)

    async def retry_failed(self, message_ids: list[str] | None) -> int:
        async def retry(conn: psycopg.AsyncConnection[Any]) -> int:
            if message_ids is None:
                cursor = await conn.execute(Q["all_failed"])
                ids = [row[0] for row in await cursor.fetchall()]
            else:
                ids = []
                for message_id in dict.fromkeys(message_ids):
                    cursor = await conn.execute(Q["state_of"], {"message_id": message_id})
                    row = await cursor.fetchone()
                    if row is None or row[1] != "failed":
                        raise RetryRefused(message_id, None if row is None else row[1])
                    ids.append(row[0])
            for job_id in ids:
                await conn.execute(Q["requeue"], {"id": job_id, "now": self._now()})
            return len(ids)

        return await self._run(retry)

    async def prune(self, delivered_before: float) -> int:
        async def delete(conn: psycopg.AsyncConnection[Any]) -> int:
            cursor = await conn.execute(Q["prune"], {"before": delivered_before})
            await conn.execute(Q["prune_changes"], {"before": delivered_before})
            return cursor.rowcount

        return await self._run(delete)

    async def prune_failed(self, failed_before: float) -> int:
        async def delete(conn: psycopg.AsyncConnection[Any]) -> int:
            cursor = await conn.execute(Q["prune_failed"], {"before": failed_before})
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

        return await self._run(delete)

    async def stats(self) -> Stats:
        async def read(conn: psycopg.AsyncConnection[Any]) -> Stats:
            cursor = await conn.execute(Q["depth"])
            depth = {state: count for state, count in await cursor.fetchall()}
            cursor = await conn.execute(Q["oldest"])
            oldest = await cursor.fetchone()
            cursor = await conn.execute(Q["held_total"])
            held = await cursor.fetchone() or (0, 0)
            return Stats({s: depth.get(s, 0) for s in STATES}, oldest[0] if oldest else None,
                         int(held[0]), int(held[1]))

        return await self._run(read)


def _jsonb(value: dict[str, Any] | None) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _listed(row: dict[str, Any]) -> Listed:
    return _status(Listed, row["id"], row)


def _change(row: dict[str, Any]) -> Change:
    return _status(Change, row["seq"], row)


S = TypeVar("S", Listed, Change)


def _status(kind: type[S], first: int, row: dict[str, Any]) -> S:
    """A status row as a Listed (``first``: its id) or a Change (``first``: its cursor)."""
    return kind(first, row["message_id"], row["state"], row["attempts"], row["accepted_at"],
                row["next_attempt_at"], _json(row["result"]), _json(row["error"]))  # fmt: skip


def _job(row: dict[str, Any]) -> Job:
    return Job(
        id=row["id"],
        message_id=row["message_id"],
        person=row["person"],
        event=_json(row["event"]),
        state=row["state"],
        attempts=row["attempts"],
        accepted_at=row["accepted_at"],
        next_attempt_at=row["next_attempt_at"],
        write_sent=row["write_sent"],
        forced=row["forced"],
        result=_json(row["result"]),
        error=_json(row["error"]),
        seq=row["seq"],
        retry_from=row["retry_from"],
        trace=_json(row.get("trace")),
    )

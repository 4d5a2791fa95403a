"""The queue stores the Enqueue's trace context with the event (schema step 2), on SQLite and PostgreSQL;
a queue created before that step gains the column, its old events kept, with no trace."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sidecar.queue import postgres, sqlite
from sidecar.queue.store import NewJob, QueueStore
from sidecar.state import open_state

TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Any, list[str]]:
    """(state, queue, the queue's first schema step alone) on a fresh store of that kind."""
    if kind == "sqlite":
        state = open_state(f"sqlite:///{tmp_path}/state.db")
        return state, sqlite.SqliteQueue(state), [sqlite.SCHEMA]
    state = open_state(request.getfixturevalue("pg_url"))
    return state, postgres.PostgresQueue(state), [postgres.Q["migrate_1"]]


def event(message_id: str) -> dict[str, Any]:
    return {"kind": "track", "message_id": message_id}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_trace_is_stored_with_the_event_and_a_queue_of_step_one_gains_the_column(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    state, queue, first_step = backend(kind, request, tmp_path)
    store: QueueStore = queue

    async def go() -> None:
        await state.start()
        await state.migrate("queue", first_step)  # a queue made by the previous release
        assert await _insert_before_step_two(kind, state, "old")
        await store.open()  # this release: step 2 only
        await store.open()  # again, as every sidecar of a fleet does: nothing to do
        assert await store.enqueue(NewJob("traced", "p:1", event("traced"), TRACE))
        assert await store.enqueue(NewJob("untraced", "p:2", event("untraced")))
        got = {m: await store.get(m) for m in ("traced", "untraced", "old")}
        traces = {m: job.trace for m, job in got.items() if job}
        assert traces == {"traced": TRACE, "untraced": None, "old": None}
        claimed = {j.message_id: j.trace for j in await store.claim("me", 30.0, 10)}
        assert claimed == {"old": None, "traced": TRACE, "untraced": None}
        await state.aclose()

    asyncio.run(go())


async def _insert_before_step_two(kind: str, state: Any, message_id: str) -> bool:
    """An event accepted by the previous release: the insert of step one, without the trace column."""
    if kind == "sqlite":

        def insert(db: Any) -> int:
            return db.execute(
                "INSERT INTO queue_deliveries (message_id, person, event, state, accepted_at, retry_from, "
                "next_attempt_at) VALUES (?, 'p:0', '{}', 'queued', 0, 0, 0)", (message_id,)
            ).rowcount

        return bool(await state.run(insert))
    async with state.pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO queue_deliveries (message_id, person, event, state, accepted_at, retry_from, "
            "next_attempt_at) VALUES (%s, 'p:0', '{}', 'queued', 0, 0, 0)", (message_id,)
        )
        return cursor.rowcount == 1

"""The queue on SQLite: its tables in the state's file, on the state's connection and thread.

The state's SQLite backend runs each operation as one BEGIN IMMEDIATE
transaction in its own thread, with synchronous=FULL, so a commit is on disk
when it returns. Enqueues that arrive while a commit is under way go into
the next one together (group commit): at 32 in flight one fsync answers many
callers, and each caller still hears back only after its row is on disk.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..state.sql import load_queries
from .sqlite_rows import change_of, dumps, job_of, listed_of, stored_event, trace_text
from .store import (
    DELIVERED,
    DELIVERING,
    FAILED,
    RETRYING,
    STATES,
    Change,
    Job,
    Limits,
    Listed,
    NewJob,
    Outcome,
    QueueFull,
    RetryRefused,
    Stats,
    check_room,
    unknown_error,
)

T = TypeVar("T")
MAX_BATCH = 512

Q = load_queries(Path(__file__).parent / "sql" / "sqlite.sql")  # the queue's SQL, by name
# The schema steps, in order (the tests build a file of an older step from the first ones).
SCHEMA, TRACE_COLUMN, CHANGE_LOG, HELD = (Q[f"migrate_{n}"] for n in range(1, 5))
# Built here, not in sqlite.sql: the claim's read and the batch insert take a list of any length.
COLUMNS = (
    "id, message_id, person, event, state, attempts, accepted_at, next_attempt_at, write_sent, forced, "
    "result, error, seq, retry_from, trace"
)
INSERT_MANY = (
    "INSERT INTO queue_deliveries (message_id, person, event, state, accepted_at, retry_from, "
    "next_attempt_at, trace, bytes) VALUES "
)
ROWS_PER_INSERT = 400  # 8 parameters a row: well under SQLite's 32,766 a statement


class SqlRunner(Protocol):
    """What the queue needs of the state's SQLite backend (sidecar/state/sqlite.py)."""

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

    async def migrate(self, component: str, steps: list[str]) -> None: ...


class SqliteQueue:
    def __init__(
        self, runner: SqlRunner, clock: Callable[[], float] = time.time, limits: Limits | None = None
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.limits = limits or Limits()
        self._pending: list[tuple[list[NewJob], asyncio.Future[list[bool]]]] = []

        self._flushing = False

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self.runner.run(work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Reads off the write lock and the writes' thread (the state's read connection)."""
        return await self.runner.read(work)

    def _next_seq(self, db: sqlite3.Connection) -> int:
        return int(db.execute(Q["next_seq"]).fetchone()[0])

    def _changed(self, db: sqlite3.Connection, job_id: int, now: float) -> None:
        """Give the row (already updated) the next cursor and append it, as it is now, to the log."""
        db.execute(Q["set_seq"], (self._next_seq(db), job_id))
        db.execute(Q["log_change"], (now, job_id))

    async def open(self) -> None:
        await self.runner.migrate("queue", [SCHEMA, TRACE_COLUMN, CHANGE_LOG, HELD])

    async def close(self) -> None:
        """The runner belongs to whoever opened it."""

    # --- enqueue: group commit ---------------------------------------------------------

    async def enqueue(self, job: NewJob) -> bool:
        return (await self.enqueue_many([job]))[0]

    async def enqueue_many(self, jobs: list[NewJob]) -> list[bool]:
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((jobs, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                groups = [jobs for jobs, _ in batch]
                try:
                    inserted = await self._run(functools.partial(self._insert_groups, groups=groups))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), new in zip(batch, inserted, strict=True):
                    if future.done():  # the caller may have gone away; the rows stay accepted
                        continue
                    if isinstance(new, QueueFull):
                        future.set_exception(new)
                    else:
                        future.set_result(new)
        finally:
            self._flushing = False

    def _take(self) -> list[tuple[list[NewJob], asyncio.Future[list[bool]]]]:
        """The next groups for one transaction: about MAX_BATCH jobs, a group never split (a batch
        from the HTTP ingest commits whole or not at all)."""
        taken, size = 0, 0
        while taken < len(self._pending) and (taken == 0 or size + len(self._pending[taken][0]) <= MAX_BATCH):
            size += len(self._pending[taken][0])
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    def _insert_groups(
        self, db: sqlite3.Connection, *, groups: list[list[NewJob]]
    ) -> list[list[bool] | QueueFull]:
        """The groups' jobs in a handful of statements, not one a job: each statement hands the GIL to the
        event loop and must win it back (up to the 5 ms switch interval while the loop computes), so a
        statement a row made a commit of 100 jobs wait on the loop a hundred times.

        Each group whole or not at all: one whose new jobs would take the queue past its limits is left
        out (QueueFull for its caller) and the others go on. Exact: BEGIN IMMEDIATE holds the write lock,
        so no other writer, in this process or another, moves the counters meanwhile."""
        now = self.clock()
        seen = self._known(db, [job.message_id for jobs in groups for job in jobs])
        held = dict(db.execute(Q["held_now"]).fetchall())
        count, size = held.get("held", 0), held.get("held_bytes", 0)
        answers: list[list[bool] | QueueFull] = []
        fresh: list[tuple[NewJob, str, int]] = []  # (job, its event as stored, its bytes)
        for jobs in groups:
            taken, answer, new = set(seen), [], []
            for job in jobs:
                is_new = job.message_id not in taken  # accepted before, or earlier in this transaction
                taken.add(job.message_id)
                answer.append(is_new)
                if is_new:
                    event = stored_event(job)
                    new.append((job, event, max(1, len(event.encode()))))
            new_bytes = sum(n for _, _, n in new)
            try:
                check_room(count, size, len(new), new_bytes, self.limits)
            except QueueFull as exc:
                answers.append(exc)  # nothing of it written; its message_ids stay unseen
                continue
            seen, count, size = taken, count + len(new), size + new_bytes
            answers.append(answer)
            fresh += new
        queued = [item for item in fresh if item[0].error is None]
        for start in range(0, len(queued), ROWS_PER_INSERT):
            self._insert_queued(db, queued[start : start + ROWS_PER_INSERT], now)
        for job, event, stored in fresh:
            if job.error is not None:  # refused at acceptance (rare): one at a time, each a change
                row = (job.message_id, job.person, event, now, now, now, trace_text(job),
                       dumps(job.error), now, stored)  # fmt: skip
                cursor = db.execute(Q["insert_failed"], row)
                assert cursor.lastrowid is not None
                self._changed(db, cursor.lastrowid, now)  # a watcher sees it
        db.execute(Q["add_held"], (count - held.get("held", 0), size - held.get("held_bytes", 0)))
        return answers

    def _known(self, db: sqlite3.Connection, message_ids: list[str]) -> set[str]:
        """Which of these message_ids the store holds (BEGIN IMMEDIATE: nobody inserts meanwhile)."""
        unique = list(dict.fromkeys(message_ids))
        known: set[str] = set()
        for start in range(0, len(unique), ROWS_PER_INSERT):
            chunk = unique[start : start + ROWS_PER_INSERT]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT message_id FROM queue_deliveries WHERE message_id IN ({marks})", chunk)
            known.update(row[0] for row in rows)
        return known

    def _insert_queued(self, db: sqlite3.Connection, jobs: list[tuple[NewJob, str, int]], now: float) -> None:
        values = ",".join(["(?, ?, ?, 'queued', ?, ?, ?, ?, ?)"] * len(jobs))
        params: list[Any] = []
        for job, event, stored in jobs:
            params += (job.message_id, job.person, event, now, now, now, trace_text(job), stored)
        db.execute(INSERT_MANY + values, params)

    # --- the worker's operations -----------------------------------------------------------

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[Job]:
        return await self._run(lambda db: self._claim(db, owner, lease_seconds, limit))

    def _claim(self, db: sqlite3.Connection, owner: str, lease_seconds: float, limit: int) -> list[Job]:
        now = self.clock()
        self._settle_expired(db, now)
        ids = [row[0] for row in db.execute(Q["due_heads"], (now, limit))]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        db.execute(
            f"UPDATE queue_deliveries SET state = 'delivering', lease_owner = ?, lease_until = ?, "
            f"write_sent = 0 WHERE id IN ({marks})",
            (owner, now + lease_seconds, *ids),
        )
        for job_id in ids:
            self._changed(db, job_id, now)
        rows = db.execute(f"SELECT {COLUMNS} FROM queue_deliveries WHERE id IN ({marks})", ids).fetchall()
        jobs = {job.id: job for job in map(job_of, rows)}
        return [jobs[i] for i in ids]

    def _settle_expired(self, db: sqlite3.Connection, now: float) -> None:
        expired = db.execute(Q["expired"], (now,)).fetchall()
        for job_id, write_sent in expired:
            if write_sent:
                error = unknown_error(
                    "the sidecar delivering this event stopped after its write may have been sent; "
                    "whether Trengo did it is unknown, so it is not sent again (retry it to resend)"
                )
                db.execute(Q["expired_sent"], (json.dumps(error), now, job_id))
            else:
                db.execute(Q["expired_unsent"], (job_id,))  # nothing written: back as it was
            self._changed(db, job_id, now)

    async def heartbeat(self, owner: str, ids: list[int], lease_seconds: float) -> None:
        def beat(db: sqlite3.Connection) -> None:
            marks = ",".join("?" * len(ids))
            db.execute(
                f"UPDATE queue_deliveries SET lease_until = ? WHERE lease_owner = ? "
                f"AND state = 'delivering' AND id IN ({marks})",
                (self.clock() + lease_seconds, owner, *ids),
            )

        if ids:
            await self._run(beat)

    async def mark_sending(self, owner: str, job_id: int) -> bool:
        def mark(db: sqlite3.Connection) -> bool:
            return db.execute(Q["mark_sending"], (job_id, owner, self.clock())).rowcount == 1

        return await self._run(mark)

    async def finish(self, owner: str, job_id: int, outcome: Outcome) -> bool:
        def end(db: sqlite3.Connection) -> bool:
            now = self.clock()
            active = 1 if outcome.state == RETRYING else 0
            if not self._holds(db, owner, job_id):
                return False
            if outcome.state == DELIVERED:  # no longer held for delivery: out of the limits' count
                db.execute(Q["delivered_held"], (job_id,))
            db.execute(
                Q["finish"],
                (
                    outcome.state,
                    active,
                    dumps(outcome.result),
                    dumps(outcome.error),
                    outcome.next_attempt_at or now,
                    None if active else now,
                    job_id,
                ),
            )
            self._changed(db, job_id, now)
            if outcome.state == DELIVERED:
                db.execute(Q["wake_waiting"], (now, job_id))
            return True

        return await self._run(end)

    def _holds(self, db: sqlite3.Connection, owner: str, job_id: int) -> bool:
        return db.execute(Q["holds"], (job_id, owner)).fetchone() is not None

    async def release(self, owner: str, job_id: int) -> None:
        def give_back(db: sqlite3.Connection) -> None:
            if db.execute(Q["release"], (job_id, owner)).rowcount == 1:
                self._changed(db, job_id, self.clock())

        await self._run(give_back)

    # --- reads and operator actions ------------------------------------------------------------

    async def get(self, message_id: str) -> Job | None:
        def read(db: sqlite3.Connection) -> Job | None:
            row = db.execute(Q["get"], (message_id,)).fetchone()
            return None if row is None else job_of(row)

        return await self._run(read)

    async def by_state(self, state: str, after_id: int, limit: int) -> list[Listed]:
        def read(db: sqlite3.Connection) -> list[Listed]:
            return [listed_of(row) for row in db.execute(Q["listed"], (state, after_id, limit))]

        return await self._read(read)

    async def changes(self, after_seq: int, limit: int) -> list[Change]:
        def read(db: sqlite3.Connection) -> list[Change]:
            return [change_of(row) for row in db.execute(Q["changes"], (after_seq, limit))]

        return await self._read(read)

    async def retry_failed(self, message_ids: list[str] | None) -> int:
        def retry(db: sqlite3.Connection) -> int:
            now = self.clock()
            if message_ids is None:
                ids = [row[0] for row in db.execute(Q["failed_ids"])]
            else:
                ids = []
                for message_id in dict.fromkeys(message_ids):
                    row = db.execute(Q["id_and_state"], (message_id,)).fetchone()
                    if row is None or row[1] != FAILED:
                        raise RetryRefused(message_id, None if row is None else row[1])
                    ids.append(row[0])
            for job_id in ids:
                db.execute(Q["retry"], (now, now, job_id))  # afresh: attempts 0, give-up clock from now
                self._changed(db, job_id, now)
            return len(ids)

        return await self._run(retry)

    async def prune(self, delivered_before: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            cursor = db.execute(Q["prune_delivered"], (delivered_before,))
            db.execute(Q["prune_changes"], (delivered_before,))
            return cursor.rowcount

        return await self._run(delete)

    async def prune_failed(self, failed_before: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            rows = db.execute(Q["failed_before"], (failed_before,)).fetchall()
            for job_id, _ in rows:
                db.execute(Q["delete_changes_of"], (job_id,))
                db.execute(Q["delete_delivery"], (job_id,))
            db.execute(Q["add_held"], (-len(rows), -sum(size for _, size in rows)))
            return len(rows)

        return await self._run(delete)

    async def stats(self) -> Stats:
        def read(db: sqlite3.Connection) -> Stats:
            depth = dict(db.execute(Q["depth"]))
            oldest = db.execute(Q["oldest"]).fetchone()
            held = dict(db.execute(Q["held_now"]).fetchall())
            return Stats({s: depth.get(s, 0) for s in STATES}, oldest[0], held.get("held", 0),
                         held.get("held_bytes", 0))

        return await self._read(read)


__all__ = ["DELIVERED", "DELIVERING", "SqliteQueue"]

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
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

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
    event_json,
    unknown_error,
)

T = TypeVar("T")
MAX_BATCH = 512

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_meta (
  key TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_deliveries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  message_id TEXT NOT NULL UNIQUE,
  person TEXT NOT NULL,
  event TEXT NOT NULL,
  state TEXT NOT NULL,
  active INTEGER NOT NULL DEFAULT 1,
  attempts INTEGER NOT NULL DEFAULT 0,
  accepted_at REAL NOT NULL,
  retry_from REAL NOT NULL,
  next_attempt_at REAL NOT NULL,
  lease_owner TEXT,
  lease_until REAL,
  write_sent INTEGER NOT NULL DEFAULT 0,
  forced INTEGER NOT NULL DEFAULT 0,
  result TEXT,
  error TEXT,
  seq INTEGER NOT NULL DEFAULT 0,
  finished_at REAL
);
CREATE INDEX IF NOT EXISTS queue_person_active ON queue_deliveries (person, id) WHERE active = 1;
CREATE INDEX IF NOT EXISTS queue_due ON queue_deliveries (next_attempt_at, id) WHERE active = 1;
CREATE INDEX IF NOT EXISTS queue_seq ON queue_deliveries (seq);
CREATE INDEX IF NOT EXISTS queue_state ON queue_deliveries (state, id);
INSERT OR IGNORE INTO queue_meta (key, value) VALUES ('seq', 0);
"""
# Step 2: the Enqueue's trace context (W3C traceparent, as JSON), so the delivery's span links to it.
TRACE_COLUMN = "ALTER TABLE queue_deliveries ADD COLUMN trace TEXT;"
# Step 3: every change of state, appended with its own cursor, for WatchDeliveries (the row only holds
# its last one, so a retry's "queued again" was overwritten before a watcher saw it). Seeded with each
# row's last change, so a watcher resuming across the upgrade misses nothing it could have seen before.
CHANGE_LOG = """
CREATE TABLE IF NOT EXISTS queue_changes (
  seq INTEGER PRIMARY KEY,
  delivery_id INTEGER NOT NULL,
  message_id TEXT NOT NULL,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  accepted_at REAL NOT NULL,
  next_attempt_at REAL NOT NULL,
  result TEXT,
  error TEXT,
  at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_changes_at ON queue_changes (at);
INSERT OR IGNORE INTO queue_changes
SELECT seq, id, message_id, state, attempts, accepted_at, next_attempt_at, result, error,
       COALESCE(finished_at, accepted_at)
FROM queue_deliveries WHERE seq > 0;
"""
# Step 4: what the queue holds for delivery (queueMaxDepth, queueMaxBytes): each row's stored bytes, and
# two counters kept in the transactions that change them (acceptance, delivered, failed rows pruned), so
# Enqueue checks its room without counting rows. Seeded from the rows not delivered at the upgrade.
HELD = """
ALTER TABLE queue_deliveries ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE queue_deliveries SET bytes = length(CAST(event AS BLOB)) WHERE state != 'delivered';
INSERT OR IGNORE INTO queue_meta (key, value)
SELECT 'held', count(*) FROM queue_deliveries WHERE state != 'delivered';
INSERT OR IGNORE INTO queue_meta (key, value)
SELECT 'held_bytes', coalesce(sum(bytes), 0) FROM queue_deliveries WHERE state != 'delivered';
"""
HELD_NOW = "SELECT key, value FROM queue_meta WHERE key IN ('held', 'held_bytes')"
ADD_HELD = (
    "UPDATE queue_meta SET value = value + CASE key WHEN 'held' THEN ? ELSE ? END "
    "WHERE key IN ('held', 'held_bytes')"
)
DELIVERED_HELD = (  # a delivered event is no longer held for delivery: out of the limits' count
    "UPDATE queue_meta SET value = value - CASE key WHEN 'held' THEN 1 ELSE "
    "(SELECT bytes FROM queue_deliveries WHERE id = ?) END WHERE key IN ('held', 'held_bytes')"
)
# The row as it is now, appended to the change log under the cursor just given to it.
LOG_CHANGE = (
    "INSERT INTO queue_changes (seq, delivery_id, message_id, state, attempts, accepted_at, "
    "next_attempt_at, result, error, at) SELECT seq, id, message_id, state, attempts, accepted_at, "
    "next_attempt_at, result, error, ? FROM queue_deliveries WHERE id = ?"
)
# The watch's read: the change log only (never the event column, never the deliveries table).
CHANGES = (
    "SELECT seq, message_id, state, attempts, accepted_at, next_attempt_at, result, error "
    "FROM queue_changes WHERE seq > ? ORDER BY seq LIMIT ?"
)
# Retention: changes older than the cutoff go, except each remaining event's last one (its state now).
PRUNE_CHANGES = (
    "DELETE FROM queue_changes WHERE at < ? AND NOT EXISTS "
    "(SELECT 1 FROM queue_deliveries d WHERE d.seq = queue_changes.seq)"
)

# ListDeliveries' read: the status only, never the event column.
LISTED = (
    "SELECT id, message_id, state, attempts, accepted_at, next_attempt_at, result, error "
    "FROM queue_deliveries WHERE state = ? AND id > ? ORDER BY id LIMIT ?"
)
COLUMNS = (
    "id, message_id, person, event, state, attempts, accepted_at, next_attempt_at, write_sent, forced, "
    "result, error, seq, retry_from, trace"
)
INSERT_MANY = (
    "INSERT INTO queue_deliveries (message_id, person, event, state, accepted_at, retry_from, "
    "next_attempt_at, trace, bytes) VALUES "
)
ROWS_PER_INSERT = 400  # 8 parameters a row: well under SQLite's 32,766 a statement
# Refused when accepted: failed at once, inactive; its cursor and change log entry follow (_changed).
INSERT_FAILED = (
    "INSERT INTO queue_deliveries (message_id, person, event, state, active, accepted_at, retry_from, "
    "next_attempt_at, trace, error, finished_at, bytes) VALUES (?, ?, ?, 'failed', 0, ?, ?, ?, ?, ?, ?, ?)"
)
# A job whose lease ran out: its holder died (or stalled past the lease).
EXPIRED_SENT = (
    "UPDATE queue_deliveries SET state = 'failed', active = 0, attempts = attempts + 1, error = ?, "
    "lease_owner = NULL, lease_until = NULL, finished_at = ? "
    "WHERE id = ?"
)
# The person's head (lowest active id), due, with nothing of that person in flight. One exception: while
# the head is a track waiting for its contact (retrying, CONTACT_NOT_FOUND), the person's first queued
# identify goes instead (it creates what the track waits for); every other event stays behind the track.
# Exactly one candidate per person, so one claim (or two sidecars' claims) never takes two of a person.
# Same rule as postgres.sql's due_heads.
DUE_HEADS = """
SELECT id FROM queue_deliveries d
WHERE d.active = 1 AND d.state IN ('queued', 'retrying') AND d.next_attempt_at <= ?
  AND NOT EXISTS (SELECT 1 FROM queue_deliveries e
                  WHERE e.active = 1 AND e.person = d.person AND e.state = 'delivering')
  AND ((NOT EXISTS (SELECT 1 FROM queue_deliveries e
                    WHERE e.active = 1 AND e.person = d.person AND e.id < d.id)
        AND NOT (d.state = 'retrying'
                 AND COALESCE(json_extract(d.error, '$.reason'), '') = 'CONTACT_NOT_FOUND'
                 AND EXISTS (SELECT 1 FROM queue_deliveries i
                             WHERE i.active = 1 AND i.person = d.person AND i.id > d.id
                               AND json_extract(i.event, '$.kind') = 'identify')))
    OR (json_extract(d.event, '$.kind') = 'identify'
        AND NOT EXISTS (SELECT 1 FROM queue_deliveries i
                        WHERE i.active = 1 AND i.person = d.person AND i.id < d.id
                          AND json_extract(i.event, '$.kind') = 'identify')
        AND EXISTS (SELECT 1 FROM queue_deliveries w
                    WHERE w.active = 1 AND w.person = d.person AND w.state = 'retrying'
                      AND json_extract(w.error, '$.reason') = 'CONTACT_NOT_FOUND'
                      AND NOT EXISTS (SELECT 1 FROM queue_deliveries x
                                      WHERE x.active = 1 AND x.person = d.person AND x.id < w.id))))
ORDER BY d.next_attempt_at, d.id LIMIT ?
"""
# An identify delivered: the person's tracks waiting for their contact are due now, not at their
# backoff's next step (up to queueRetryMaxSeconds later).
WAKE_WAITING = """
UPDATE queue_deliveries SET next_attempt_at = MIN(next_attempt_at, ?)
WHERE active = 1 AND state = 'retrying'
  AND COALESCE(json_extract(error, '$.reason'), '') = 'CONTACT_NOT_FOUND'
  AND person = (SELECT i.person FROM queue_deliveries i
                WHERE i.id = ? AND COALESCE(json_extract(i.event, '$.kind'), '') = 'identify')
"""


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
        row = db.execute(
            "UPDATE queue_meta SET value = value + 1 WHERE key = 'seq' RETURNING value"
        ).fetchone()
        return int(row[0])

    def _changed(self, db: sqlite3.Connection, job_id: int, now: float) -> None:
        """Give the row (already updated) the next cursor and append it, as it is now, to the log."""
        db.execute("UPDATE queue_deliveries SET seq = ? WHERE id = ?", (self._next_seq(db), job_id))
        db.execute(LOG_CHANGE, (now, job_id))

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
        held = dict(db.execute(HELD_NOW).fetchall())
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
                    event = _event_json(job)
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
                row = (job.message_id, job.person, event, now, now, now, _trace(job),
                       _dumps(job.error), now, stored)  # fmt: skip
                cursor = db.execute(INSERT_FAILED, row)
                assert cursor.lastrowid is not None
                self._changed(db, cursor.lastrowid, now)  # a watcher sees it
        db.execute(ADD_HELD, (count - held.get("held", 0), size - held.get("held_bytes", 0)))
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
            params += (job.message_id, job.person, event, now, now, now, _trace(job), stored)
        db.execute(INSERT_MANY + values, params)

    # --- the worker's operations -----------------------------------------------------------

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[Job]:
        return await self._run(lambda db: self._claim(db, owner, lease_seconds, limit))

    def _claim(self, db: sqlite3.Connection, owner: str, lease_seconds: float, limit: int) -> list[Job]:
        now = self.clock()
        self._settle_expired(db, now)
        ids = [row[0] for row in db.execute(DUE_HEADS, (now, limit))]
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
        jobs = {job.id: job for job in map(_job, rows)}
        return [jobs[i] for i in ids]

    def _settle_expired(self, db: sqlite3.Connection, now: float) -> None:
        expired = db.execute(
            "SELECT id, write_sent FROM queue_deliveries "
            "WHERE active = 1 AND state = 'delivering' AND lease_until < ?",
            (now,),
        ).fetchall()
        for job_id, write_sent in expired:
            if write_sent:
                error = unknown_error(
                    "the sidecar delivering this event stopped after its write may have been sent; "
                    "whether Trengo did it is unknown, so it is not sent again (retry it to resend)"
                )
                db.execute(EXPIRED_SENT, (json.dumps(error), now, job_id))
            else:
                # Nothing was written: it goes back as it was (retrying if it had failed before).
                db.execute(
                    "UPDATE queue_deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' "
                    "ELSE 'queued' END, lease_owner = NULL, lease_until = NULL WHERE id = ?",
                    (job_id,),
                )
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
            cursor = db.execute(
                "UPDATE queue_deliveries SET write_sent = 1 WHERE id = ? AND lease_owner = ? "
                "AND state = 'delivering' AND lease_until >= ?",
                (job_id, owner, self.clock()),
            )
            return cursor.rowcount == 1

        return await self._run(mark)

    async def finish(self, owner: str, job_id: int, outcome: Outcome) -> bool:
        def end(db: sqlite3.Connection) -> bool:
            now = self.clock()
            active = 1 if outcome.state == RETRYING else 0
            if not self._holds(db, owner, job_id):
                return False
            if outcome.state == DELIVERED:  # no longer held for delivery: out of the limits' count
                db.execute(DELIVERED_HELD, (job_id,))
            db.execute(
                "UPDATE queue_deliveries SET state = ?, active = ?, attempts = attempts + 1, "
                "result = ?, error = ?, next_attempt_at = ?, lease_owner = NULL, lease_until = NULL, "
                "write_sent = 0, forced = 0, finished_at = ? WHERE id = ?",
                (
                    outcome.state,
                    active,
                    _dumps(outcome.result),
                    _dumps(outcome.error),
                    outcome.next_attempt_at or now,
                    None if active else now,
                    job_id,
                ),
            )
            self._changed(db, job_id, now)
            if outcome.state == DELIVERED:
                db.execute(WAKE_WAITING, (now, job_id))
            return True

        return await self._run(end)

    def _holds(self, db: sqlite3.Connection, owner: str, job_id: int) -> bool:
        row = db.execute(
            "SELECT 1 FROM queue_deliveries WHERE id = ? AND lease_owner = ? AND state = 'delivering'",
            (job_id, owner),
        ).fetchone()
        return row is not None

    async def release(self, owner: str, job_id: int) -> None:
        def give_back(db: sqlite3.Connection) -> None:
            cursor = db.execute(
                "UPDATE queue_deliveries SET state = CASE WHEN attempts > 0 THEN 'retrying' "
                "ELSE 'queued' END, lease_owner = NULL, lease_until = NULL, write_sent = 0 "
                "WHERE id = ? AND lease_owner = ? AND state = 'delivering'",
                (job_id, owner),
            )
            if cursor.rowcount == 1:
                self._changed(db, job_id, self.clock())

        await self._run(give_back)

    # --- reads and operator actions ------------------------------------------------------------

    async def get(self, message_id: str) -> Job | None:
        def read(db: sqlite3.Connection) -> Job | None:
            row = db.execute(
                f"SELECT {COLUMNS} FROM queue_deliveries WHERE message_id = ?", (message_id,)
            ).fetchone()
            return None if row is None else _job(row)

        return await self._run(read)

    async def by_state(self, state: str, after_id: int, limit: int) -> list[Listed]:
        def read(db: sqlite3.Connection) -> list[Listed]:
            return [_listed(row) for row in db.execute(LISTED, (state, after_id, limit))]

        return await self._read(read)

    async def changes(self, after_seq: int, limit: int) -> list[Change]:
        def read(db: sqlite3.Connection) -> list[Change]:
            return [_change(row) for row in db.execute(CHANGES, (after_seq, limit))]

        return await self._read(read)

    async def retry_failed(self, message_ids: list[str] | None) -> int:
        def retry(db: sqlite3.Connection) -> int:
            now = self.clock()
            if message_ids is None:
                ids = [row[0] for row in db.execute("SELECT id FROM queue_deliveries WHERE state = 'failed'")]
            else:
                ids = []
                for message_id in dict.fromkeys(message_ids):
                    row = db.execute(
                        "SELECT id, state FROM queue_deliveries WHERE message_id = ?", (message_id,)
                    ).fetchone()
                    if row is None or row[1] != FAILED:
                        raise RetryRefused(message_id, None if row is None else row[1])
                    ids.append(row[0])
            for job_id in ids:
                # Afresh: attempts from 0 and the give-up clock from now; accepted_at stays the acceptance.
                db.execute(
                    "UPDATE queue_deliveries SET state = 'queued', active = 1, forced = 1, attempts = 0, "
                    "next_attempt_at = ?, retry_from = ?, finished_at = NULL WHERE id = ?",
                    (now, now, job_id),
                )
                self._changed(db, job_id, now)
            return len(ids)

        return await self._run(retry)

    async def prune(self, delivered_before: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM queue_deliveries WHERE state = 'delivered' AND finished_at < ?",
                (delivered_before,),
            )
            db.execute(PRUNE_CHANGES, (delivered_before,))
            return cursor.rowcount

        return await self._run(delete)

    async def prune_failed(self, failed_before: float) -> int:
        def delete(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "SELECT id, bytes FROM queue_deliveries WHERE state = 'failed' AND finished_at < ?",
                (failed_before,),
            ).fetchall()
            for job_id, _ in rows:
                db.execute("DELETE FROM queue_changes WHERE delivery_id = ?", (job_id,))
                db.execute("DELETE FROM queue_deliveries WHERE id = ?", (job_id,))
            db.execute(ADD_HELD, (-len(rows), -sum(size for _, size in rows)))
            return len(rows)

        return await self._run(delete)

    async def stats(self) -> Stats:
        def read(db: sqlite3.Connection) -> Stats:
            depth = dict(db.execute("SELECT state, count(*) FROM queue_deliveries GROUP BY state"))
            oldest = db.execute("SELECT min(accepted_at) FROM queue_deliveries WHERE active = 1").fetchone()
            held = dict(db.execute(HELD_NOW).fetchall())
            return Stats({s: depth.get(s, 0) for s in STATES}, oldest[0], held.get("held", 0),
                         held.get("held_bytes", 0))

        return await self._read(read)


def _event_json(job: NewJob) -> str:
    return event_json(job.event)


def _trace(job: NewJob) -> str | None:
    return _dumps(job.trace) if job.trace else None


def _dumps(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _listed(row: tuple[Any, ...]) -> Listed:
    return _status(Listed, row)


def _change(row: tuple[Any, ...]) -> Change:
    return _status(Change, row)


S = TypeVar("S", Listed, Change)


def _status(kind: type[S], row: tuple[Any, ...]) -> S:
    """A status row (the cursor or id first, then message_id ... error) as a Listed or a Change."""
    result, error = (json.loads(value) if value else None for value in row[6:8])
    return kind(row[0], row[1], row[2], row[3], row[4], row[5], result, error)


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0],
        message_id=row[1],
        person=row[2],
        event=json.loads(row[3]),
        state=row[4],
        attempts=row[5],
        accepted_at=row[6],
        next_attempt_at=row[7],
        write_sent=bool(row[8]),
        forced=bool(row[9]),
        result=json.loads(row[10]) if row[10] else None,
        error=json.loads(row[11]) if row[11] else None,
        seq=row[12],
        retry_from=row[13],
        trace=json.loads(row[14]) if row[14] else None,
    )


__all__ = ["DELIVERED", "DELIVERING", "SqliteQueue"]

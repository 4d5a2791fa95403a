"""The SQLite queue's rows and values: a job's fields as stored (JSON text), and a row read back as a Job,
a Listed or a Change. sqlite.py runs the SQL; this only converts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from .store import Change, Job, Listed, NewJob, event_json


def stored_event(job: NewJob) -> str:
    return event_json(job.event)


def trace_text(job: NewJob) -> str | None:
    return dumps(job.trace) if job.trace else None


def dumps(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def listed_of(row: tuple[Any, ...]) -> Listed:
    return _status(Listed, row)


def change_of(row: tuple[Any, ...]) -> Change:
    return _status(Change, row)


S = TypeVar("S", Listed, Change)


def _status(kind: type[S], row: tuple[Any, ...]) -> S:
    """A status row (the cursor or id first, then message_id ... error) as a Listed or a Change."""
    result, error = (json.loads(value) if value else None for value in row[6:8])
    return kind(row[0], row[1], row[2], row[3], row[4], row[5], result, error)


def job_of(row: tuple[Any, ...]) -> Job:
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

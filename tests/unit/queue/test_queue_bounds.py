"""The queue's bounds at the store, on SQLite and a real PostgreSQL: queueMaxDepth and queueMaxBytes
(QUEUE_FULL, nothing written), failed rows pruned with their change-log entries, listings without
the event column, and on SQLite reads that neither take nor wait for the write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.queue.postgres import PostgresQueue
from sidecar.queue.sqlite import SqliteQueue
from sidecar.queue.store import DELIVERED, FAILED, Limits, NewJob, Outcome, QueueFull, QueueStore
from sidecar.state import open_state
from tests.unit.queue.test_queue_store import Clock, Run, claim, enqueue_all, job, settle, transitions


@pytest.fixture(params=["sqlite", "postgresql"])
def bounded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Run, Clock]]:
    """A fresh store of that backend holding at most 3 events and 2,000 bytes."""
    clock, loop = Clock(), asyncio.new_event_loop()
    limits = Limits(max_depth=3, max_bytes=2_000)
    queue: QueueStore
    if request.param == "sqlite":
        state = open_state(f"sqlite:///{tmp_path}/state.db", clock=clock)
        queue = SqliteQueue(state, clock, limits)
    else:
        state = open_state(request.getfixturevalue("pg_url"))
        queue = PostgresQueue(state, clock, limits)
    loop.run_until_complete(state.start())
    loop.run_until_complete(queue.open())

    def run(fn: Any) -> Any:
        return loop.run_until_complete(fn(queue))

    yield run, clock
    loop.run_until_complete(state.aclose())
    loop.close()


def sized(message_id: str, size: int) -> NewJob:
    return NewJob(message_id, message_id, {"message_id": message_id, "pad": "x" * size})


def full(run: Run, *jobs: NewJob) -> QueueFull:
    with pytest.raises(QueueFull) as raised:
        run(lambda q: q.enqueue_many(list(jobs)))
    return raised.value


def test_past_max_depth_nothing_of_the_batch_is_written(bounded: tuple[Run, Clock]) -> None:
    run, _ = bounded
    assert enqueue_all(run, job("a", "p"), job("b", "p"), job("a", "p")) == [True, True, False]
    refused = full(run, job("c", "q"), job("d", "q"))  # 2 + 2 > 3: the whole batch
    assert refused.reason == "QUEUE_FULL" and refused.retry_after and "queueMaxDepth 3" in refused.message
    assert run(lambda q: q.get("c")) is None and run(lambda q: q.get("d")) is None
    assert enqueue_all(run, job("a", "p"), job("c", "q")) == [False, True]  # a duplicate takes no room
    full(run, job("e", "q"))
    stats = run(lambda q: q.stats())
    assert (stats.held, sum(stats.depth.values())) == (3, 3)


def test_past_max_bytes_nothing_is_written_and_delivery_makes_room(bounded: tuple[Run, Clock]) -> None:
    run, _ = bounded
    assert run(lambda q: q.enqueue(sized("big", 1_200)))
    refused = full(run, sized("more", 900))
    assert "queueMaxBytes 2000" in refused.message
    assert run(lambda q: q.get("more")) is None
    held = run(lambda q: q.stats()).held_bytes
    assert 1_200 < held < 1_300  # the event as stored, in JSON
    assert claim(run) == ["big"]
    settle(run, "big", Outcome(DELIVERED, result={"ok": True}))
    assert run(lambda q: q.stats()).held_bytes == 0  # delivered: no longer held
    assert run(lambda q: q.enqueue(sized("more", 900)))


def test_a_failed_event_holds_room_until_it_is_pruned_with_its_changes(bounded: tuple[Run, Clock]) -> None:
    run, clock = bounded
    enqueue_all(run, job("old", "p"), job("new", "q"), job("done", "r"))
    assert sorted(claim(run)) == ["done", "new", "old"]
    settle(run, "old", Outcome(FAILED, error={"reason": "X"}))
    settle(run, "done", Outcome(DELIVERED))
    clock.now += 100
    settle(run, "new", Outcome(FAILED, error={"reason": "X"}))
    assert run(lambda q: q.stats()).held == 2  # both failed ones wait for an operator
    assert run(lambda q: q.prune_failed(clock.now - 50)) == 1
    assert run(lambda q: q.get("old")) is None and run(lambda q: q.get("new")).state == FAILED
    assert "old" not in {m for m, _, _ in transitions(run)}  # its change-log entries went with it
    assert {m for m, _, _ in transitions(run)} == {"new", "done"}
    assert run(lambda q: q.stats()).held == 1
    assert run(lambda q: q.get("done")).state == DELIVERED  # delivered: queueRetentionSeconds' business


def test_listing_gives_statuses_without_bodies(bounded: tuple[Run, Clock]) -> None:
    run, _ = bounded
    enqueue_all(run, sized("m1", 10), sized("m2", 10))
    listed = run(lambda q: q.by_state("queued", 0, 10))
    assert [item.message_id for item in listed] == ["m1", "m2"]
    assert not hasattr(listed[0], "event")


def test_sqlite_reads_neither_take_nor_wait_for_the_write_lock(tmp_path: Path) -> None:
    """Another connection holds the write lock (BEGIN IMMEDIATE), and an Enqueue is stuck behind it on
    the store's thread: the watch's poll, the listing and the stats still answer. A read that took the
    write lock, or ran on the writes' thread, would wait until the lock is let go."""
    loop = asyncio.new_event_loop()
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    queue = SqliteQueue(state)
    loop.run_until_complete(state.start())
    loop.run_until_complete(queue.open())
    loop.run_until_complete(queue.enqueue(job("m1", "p")))
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()
    try:

        async def while_locked() -> tuple[Any, ...]:
            stuck = asyncio.ensure_future(queue.enqueue(job("m2", "q")))
            await asyncio.sleep(0.2)
            assert not stuck.done()  # the write waits for the lock, as it must
            reads = await asyncio.wait_for(
                asyncio.gather(queue.changes(0, 100), queue.by_state("queued", 0, 10), queue.stats()), 5
            )
            assert not stuck.done()  # the reads answered while the write lock was still held
            holder.rollback()
            released.set()
            assert await stuck
            return tuple(reads)

        changes, listed, stats = loop.run_until_complete(while_locked())
        assert changes == [] and [item.message_id for item in listed] == ["m1"] and stats.held == 1
    finally:
        if not released.is_set():
            holder.rollback()
        holder.close()
        loop.run_until_complete(state.aclose())
        loop.close()

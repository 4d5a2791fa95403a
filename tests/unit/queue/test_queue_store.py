"""One contract suite for the queue's store, run against every durable backend, with a fake clock.

The properties the worker leans on: acceptance once per message_id, only a person's head is claimed
(and never two of a person at once), an expired lease settles as unknown if a write may have gone,
operator retries, the cursor of changes, retention.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.queue.policy import TRANSIENT, QueuePolicy
from sidecar.queue.postgres import PostgresQueue
from sidecar.queue.sqlite import SqliteQueue
from sidecar.queue.store import (
    DELIVERED,
    DELIVERING,
    FAILED,
    QUEUED,
    RETRYING,
    NewJob,
    Outcome,
    QueueStore,
    RetryRefused,
)
from sidecar.state import open_state

LEASE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


Run = Callable[[Callable[[QueueStore], Awaitable[Any]]], Any]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Run, Clock]]:
    """run(fn): fn(store) on a fresh store of that backend, on one event loop for the test."""
    clock = Clock()
    loop = asyncio.new_event_loop()
    queue: QueueStore
    if request.param == "sqlite":
        state = open_state(f"sqlite:///{tmp_path}/state.db", clock=clock)
        queue = SqliteQueue(state, clock)
    else:
        state = open_state(request.getfixturevalue("pg_url"))
        queue = PostgresQueue(state, clock)
    loop.run_until_complete(state.start())
    loop.run_until_complete(queue.open())

    def run(fn: Callable[[QueueStore], Awaitable[Any]]) -> Any:
        return loop.run_until_complete(fn(queue))

    yield run, clock
    loop.run_until_complete(state.aclose())
    loop.close()


def job(message_id: str, person: str) -> NewJob:
    return NewJob(message_id, person, {"kind": "track", "message_id": message_id})


def enqueue_all(run: Run, *jobs: NewJob) -> list[bool]:
    """Accepted one after another: acceptance order is each person's order."""

    async def go(q: QueueStore) -> list[bool]:
        return [await q.enqueue(j) for j in jobs]

    return list(run(go))


def claim(run: Run, owner: str = "a", limit: int = 10) -> list[str]:
    return [j.message_id for j in run(lambda q: q.claim(owner, LEASE, limit))]


def settle(run: Run, message_id: str, outcome: Outcome, owner: str = "a") -> bool:
    async def go(q: QueueStore) -> bool:
        found = await q.get(message_id)
        assert found is not None
        return await q.finish(owner, found.id, outcome)

    return bool(run(go))


def state(run: Run, message_id: str) -> str:
    found = run(lambda q: q.get(message_id))
    return str(found.state)


def test_a_message_id_is_accepted_once(store: tuple[Run, Clock]) -> None:
    run, _ = store
    assert enqueue_all(run, job("m1", "p"), job("m1", "p"), job("m2", "p")) == [True, False, True]
    assert enqueue_all(run, job("m1", "q")) == [False]
    assert run(lambda q: q.get("m1")).person == "p"


def test_concurrent_enqueues_of_one_message_id_accept_it_once(store: tuple[Run, Clock]) -> None:
    run, _ = store

    async def go(q: QueueStore) -> list[bool]:
        return list(await asyncio.gather(*(q.enqueue(job(f"m{i % 3}", "p")) for i in range(12))))

    assert sorted(run(go)) == [False] * 9 + [True] * 3


def test_only_each_persons_head_is_claimed_and_one_at_a_time(store: tuple[Run, Clock]) -> None:
    run, clock = store
    enqueue_all(run, job("p1", "p"), job("p2", "p"), job("q1", "q"))
    assert sorted(claim(run)) == ["p1", "q1"]
    assert claim(run, "b") == []  # p1 and q1 are in flight; p2 waits behind p1
    settle(run, "p1", Outcome(RETRYING, error={"message": "503"}, next_attempt_at=clock.now + 10))
    assert claim(run, "b") == []  # p1 retrying holds p2 back
    clock.now += 10
    assert claim(run, "b") == ["p1"]
    settle(run, "p1", Outcome(FAILED, error={"reason": "TRENGO_REJECTED"}), owner="b")
    assert claim(run, "b") == ["p2"]  # failed for good: the next one goes


def test_an_expired_lease_settles_by_whether_a_write_may_have_gone(store: tuple[Run, Clock]) -> None:
    run, clock = store
    enqueue_all(run, job("sent", "p"), job("unsent", "q"))
    claimed = run(lambda q: q.claim("dead", LEASE, 10))
    sent = next(j for j in claimed if j.message_id == "sent")
    assert run(lambda q: q.mark_sending("dead", sent.id)) is True
    clock.now += LEASE + 1
    assert claim(run, "alive") == ["unsent"]  # given back and claimed again, its write never went
    failed = run(lambda q: q.get("sent"))
    assert (failed.state, failed.error["reason"], failed.attempts) == (FAILED, "TRENGO_OUTCOME_UNKNOWN", 1)
    assert run(lambda q: q.mark_sending("dead", sent.id)) is False  # the dead owner cannot write now
    assert settle(run, "sent", Outcome(DELIVERED), owner="dead") is False


def test_a_heartbeat_keeps_the_lease(store: tuple[Run, Clock]) -> None:
    run, clock = store
    enqueue_all(run, job("m", "p"))
    (claimed,) = run(lambda q: q.claim("a", LEASE, 10))
    clock.now += LEASE - 1
    run(lambda q: q.heartbeat("a", [claimed.id], LEASE))
    clock.now += LEASE - 1
    assert claim(run, "b") == []
    assert state(run, "m") == DELIVERING


def test_release_gives_it_back_as_it_was(store: tuple[Run, Clock]) -> None:
    run, _ = store
    enqueue_all(run, job("m", "p"))
    (claimed,) = run(lambda q: q.claim("a", LEASE, 10))
    run(lambda q: q.release("a", claimed.id))
    assert state(run, "m") == QUEUED
    assert claim(run, "b") == ["m"]


def test_operator_retry_of_failed_events(store: tuple[Run, Clock]) -> None:
    run, _ = store
    enqueue_all(run, job("f1", "p"), job("f2", "q"), job("ok", "r"))
    claim(run)
    settle(run, "f1", Outcome(FAILED, error={"reason": "X"}))
    settle(run, "f2", Outcome(FAILED, error={"reason": "X"}))
    settle(run, "ok", Outcome(DELIVERED, result={"ticket_id": "1"}))
    with pytest.raises(RetryRefused):
        run(lambda q: q.retry_failed(["f1", "ok"]))  # ok is delivered: nothing changes
    with pytest.raises(RetryRefused):
        run(lambda q: q.retry_failed(["nope"]))
    assert state(run, "f1") == FAILED
    assert run(lambda q: q.retry_failed(["f1"])) == 1
    assert run(lambda q: q.get("f1")).forced is True
    assert run(lambda q: q.retry_failed(None)) == 1  # f2, the only failed one left
    assert sorted(claim(run)) == ["f1", "f2"]


def transitions(run: Run, after: int = 0) -> list[tuple[str, str, int]]:
    return [(c.message_id, c.state, c.attempts) for c in run(lambda q: q.changes(after, 100))]


def test_changes_follow_a_cursor(store: tuple[Run, Clock]) -> None:
    run, _ = store
    enqueue_all(run, job("a", "p"), job("b", "q"))
    assert run(lambda q: q.changes(0, 10)) == []  # acceptance is not a change a watcher follows
    claim(run)
    settle(run, "b", Outcome(DELIVERED))
    settle(run, "a", Outcome(FAILED, error={"reason": "X"}))
    changes = run(lambda q: q.changes(0, 10))
    assert [(c.message_id, c.state) for c in changes] == [
        ("a", DELIVERING), ("b", DELIVERING), ("b", DELIVERED), ("a", FAILED)
    ]
    assert [c.seq for c in changes] == sorted({c.seq for c in changes})  # one cursor each, in order
    assert [c.message_id for c in run(lambda q: q.changes(changes[2].seq, 10))] == ["a"]
    assert len(run(lambda q: q.changes(0, 2))) == 2  # the limit pages them
    run(lambda q: q.retry_failed(["a"]))
    assert transitions(run, changes[3].seq) == [("a", QUEUED, 0)]


def test_every_transition_of_a_retried_event_has_its_own_cursor(store: tuple[Run, Clock]) -> None:
    """queued -> delivering -> retrying -> delivering -> failed -> queued again -> delivering ->
    delivered: each one, in order, from 0 and from every cursor in between (a reconnect anywhere)."""
    run, clock = store
    enqueue_all(run, job("m", "p"))
    claim(run)
    settle(run, "m", Outcome(RETRYING, error={"reason": "TRENGO_UNAVAILABLE"}, next_attempt_at=clock.now + 5))
    clock.now += 5
    claim(run)
    settle(run, "m", Outcome(FAILED, error={"reason": "TRENGO_UNAVAILABLE"}))
    run(lambda q: q.retry_failed(["m"]))
    claim(run)
    settle(run, "m", Outcome(DELIVERED, result={"ticket_id": "7"}))
    expected = [
        ("m", DELIVERING, 0), ("m", RETRYING, 1), ("m", DELIVERING, 1), ("m", FAILED, 2),
        ("m", QUEUED, 0), ("m", DELIVERING, 0), ("m", DELIVERED, 1),
    ]
    changes = run(lambda q: q.changes(0, 100))
    assert transitions(run) == expected
    for i, change in enumerate(changes):
        assert transitions(run, change.seq) == expected[i + 1:]
    assert changes[1].error == {"reason": "TRENGO_UNAVAILABLE"} and changes[-1].result == {"ticket_id": "7"}
    assert run(lambda q: q.get("m")).seq == changes[-1].seq  # the row keeps its last cursor


def test_a_given_back_event_is_a_change_too(store: tuple[Run, Clock]) -> None:
    """A watcher that saw "delivering" learns the event went back (released, or its lease expired)."""
    run, clock = store
    enqueue_all(run, job("released", "p"), job("expired", "q"))
    claimed = {j.message_id: j for j in run(lambda q: q.claim("a", LEASE, 10))}
    run(lambda q: q.release("a", claimed["released"].id))
    run(lambda q: q.release("a", claimed["released"].id))  # not held any more: no change
    clock.now += LEASE + 1
    assert claim(run, "b") == ["released", "expired"]  # both due since acceptance: in acceptance order
    assert [(m, s) for m, s, _ in transitions(run)] == [
        ("released", DELIVERING), ("expired", DELIVERING), ("released", QUEUED),
        ("expired", QUEUED), ("released", DELIVERING), ("expired", DELIVERING),
    ]


def test_a_retry_after_give_up_gets_the_full_schedule_again_and_keeps_accepted_at(
    store: tuple[Run, Clock],
) -> None:
    run, clock = store
    accepted = clock.now
    enqueue_all(run, job("m", "p"))
    claim(run)
    settle(run, "m", Outcome(RETRYING, error={"reason": "X"}, next_attempt_at=clock.now + 10))
    clock.now += 10
    claim(run)
    settle(run, "m", Outcome(FAILED, error={"reason": "X"}))
    given_up = run(lambda q: q.get("m"))
    assert (given_up.state, given_up.attempts, given_up.accepted_at) == (FAILED, 2, accepted)
    clock.now += 3600
    assert run(lambda q: q.retry_failed(["m"])) == 1
    retried = run(lambda q: q.get("m"))
    assert (retried.state, retried.attempts, retried.forced) == (QUEUED, 0, True)
    assert retried.accepted_at == accepted  # when it was accepted, not when it was retried
    assert retried.retry_from == clock.now and retried.next_attempt_at == clock.now
    # The worker's policy reads attempts and retry_from: the schedule starts over, as on the first day.
    policy = QueuePolicy(min_attempts=2, give_up_seconds=60)
    (claimed,) = run(lambda q: q.claim("a", LEASE, 10))
    assert policy.decide(TRANSIENT, claimed.attempts + 1, clock.now - claimed.retry_from) == "retry"
    assert policy.delay(claimed.attempts + 1) == policy.base_seconds
    settle(run, "m", Outcome(DELIVERED))
    assert run(lambda q: q.get("m")).attempts == 1


def test_a_lease_taken_over_keeps_order_and_attempts(store: tuple[Run, Clock]) -> None:
    """A sidecar dies holding a person's head: after its lease, another takes it (unsent), then the
    rest of that person's events follow in acceptance order."""
    run, clock = store
    enqueue_all(run, job("p1", "p"), job("p2", "p"), job("p3", "p"))
    assert claim(run, "dead") == ["p1"]
    assert claim(run, "alive") == []
    clock.now += LEASE + 1
    assert claim(run, "alive") == ["p1"]
    assert settle(run, "p1", Outcome(DELIVERED), owner="dead") is False
    assert settle(run, "p1", Outcome(DELIVERED), owner="alive") is True
    assert run(lambda q: q.get("p1")).attempts == 1  # the dead owner's claim was no attempt
    assert claim(run, "alive") == ["p2"]
    settle(run, "p2", Outcome(DELIVERED), owner="alive")
    assert claim(run, "alive") == ["p3"]


def test_delivered_events_are_pruned_after_retention(store: tuple[Run, Clock]) -> None:
    run, clock = store
    enqueue_all(run, job("old", "p"), job("failed", "q"), job("new", "r"))
    claim(run)
    settle(run, "old", Outcome(DELIVERED))
    settle(run, "failed", Outcome(FAILED, error={"reason": "X"}))
    clock.now += 100
    settle(run, "new", Outcome(DELIVERED))
    assert run(lambda q: q.prune(clock.now - 50)) == 1
    assert run(lambda q: q.get("old")) is None
    assert state(run, "failed") == FAILED  # failed events stay for an operator
    stats = run(lambda q: q.stats())
    assert stats.depth[DELIVERED] == 1 and stats.depth[FAILED] == 1
    # The change log keeps what is recent, and each remaining event's last change however old.
    assert [(m, s) for m, s, _ in transitions(run)] == [("failed", FAILED), ("new", DELIVERED)]


def test_by_state_pages_oldest_first(store: tuple[Run, Clock]) -> None:
    run, _ = store
    enqueue_all(run, *(job(f"m{i}", f"p{i}") for i in range(5)))
    first = run(lambda q: q.by_state(QUEUED, 0, 2))
    assert [j.message_id for j in first] == ["m0", "m1"]
    rest = run(lambda q: q.by_state(QUEUED, first[-1].id, 10))
    assert [j.message_id for j in rest] == ["m2", "m3", "m4"]
    stats = run(lambda q: q.stats())
    assert stats.depth[QUEUED] == 5 and stats.oldest_queued_at == run(lambda q: q.get("m0")).accepted_at


def test_nested_flight_locks_that_share_a_lock_file_do_not_wait_on_themselves(tmp_path: Path) -> None:
    """A queued track takes its message_id's lock, then its person's; on SQLite the two keys can hash
    to one lock file, which the process then already holds (the crash test once hung on it)."""
    import hashlib

    from sidecar.state import sqlite as state_sqlite

    def bucket(key: str) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=4).digest()
        return int.from_bytes(digest, "big") % state_sqlite.LOCK_FILES

    outer = "message:m-1"
    inner = next(f"person:p{n}" for n in range(100_000) if bucket(f"person:p{n}") == bucket(outer))

    async def main() -> None:
        state = open_state(f"sqlite:///{tmp_path}/state.db")
        await state.start()
        other = open_state(f"sqlite:///{tmp_path}/state.db")  # another sidecar on the same file
        try:
            async with asyncio.timeout(5):
                async with state.flight_lock(outer, outer=True), state.flight_lock(inner):
                    with pytest.raises(TimeoutError):  # held against the other sidecar all along
                        async with asyncio.timeout(0.2), other.flight_lock(inner):
                            pass
            async with asyncio.timeout(1), other.flight_lock(inner):
                pass  # and free once released
        finally:
            await state.aclose()
            await other.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_upgraded_store_seeds_the_change_log_with_each_events_last_change(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A store from before the change log (queue schema step 2): a watcher resuming after the upgrade
    still gets each event's last change under the cursor it had, and new changes follow it."""
    from sidecar.queue import sqlite as queue_sqlite
    from sidecar.queue.postgres import Q

    clock = Clock()
    url = f"sqlite:///{tmp_path}/state.db" if backend == "sqlite" else request.getfixturevalue("pg_url")
    old_steps = [queue_sqlite.SCHEMA, queue_sqlite.TRACE_COLUMN] if backend == "sqlite" else [
        Q["migrate_1"], Q["migrate_2"]]  # fmt: skip
    # What the old code left: a failed event whose last change had cursor 7, one never changed.
    rows = [("old-failed", "failed", 1, 7), ("old-queued", "queued", 0, 0)]

    async def main() -> list[tuple[str, str, int]]:
        state = open_state(url, clock=clock) if backend == "sqlite" else open_state(url)
        await state.start()
        try:
            await state.migrate("queue", old_steps)
            for message_id, status, attempts, seq in rows:
                sql = (
                    "INSERT INTO queue_deliveries (message_id, person, event, state, active, attempts, "
                    "accepted_at, retry_from, next_attempt_at, seq) VALUES "
                    f"('{message_id}', 'p-{message_id}', '{{}}', '{status}', {status != 'failed'}, "
                    f"{attempts}, 1, 1, 1, {seq})"
                )
                await _raw(state, backend, sql)
            await _raw(state, backend, "UPDATE queue_meta SET value = 7 WHERE key = 'seq'")
            queue: QueueStore = SqliteQueue(state, clock)
            if backend == "postgresql":
                queue = PostgresQueue(state, clock)
            await queue.open()  # step 3: the change log
            await queue.retry_failed(["old-failed"])
            return [(c.message_id, c.state, c.seq) for c in await queue.changes(0, 10)]
        finally:
            await state.aclose()

    assert asyncio.run(main()) == [("old-failed", FAILED, 7), ("old-failed", QUEUED, 8)]


async def _raw(state: Any, backend: str, sql: str) -> None:
    if backend == "sqlite":
        await state.run(lambda db: db.execute(sql.replace("True", "1").replace("False", "0")))
    else:
        async with state.pool.connection() as conn:
            await conn.execute(sql)


def test_a_batch_is_stored_in_order_with_its_refused_events_failed(store: tuple[Run, Clock]) -> None:
    """enqueue_many (the HTTP ingest's batch): one transaction; duplicates inside it or of earlier
    events answered False; a job with an error stored failed and inactive, with a cursor for watchers."""
    run, _ = store
    enqueue_all(run, job("old", "p"))
    error = {"code": 3, "message": "event.event is required", "reason": "INVALID_EVENT"}
    refused = NewJob("bad", "message:bad", {"refused": {"type": "track"}}, error=error)
    batch = [job("b1", "p"), job("old", "p"), refused, job("b2", "q"), job("b1", "p"), job("b3", "p")]
    assert run(lambda q: q.enqueue_many(batch)) == [True, False, True, True, False, True]
    assert run(lambda q: q.enqueue_many([refused, job("b2", "q")])) == [False, False]
    failed = run(lambda q: q.get("bad"))
    assert failed.state == FAILED and failed.error["reason"] == "INVALID_EVENT" and failed.seq > 0
    assert [c.message_id for c in run(lambda q: q.changes(0, 10))] == ["bad"]  # acceptance is no change
    # Order per person holds across the batch, and the refused event holds no one's turn.
    assert claim(run, limit=10) == ["old", "b2"]
    assert [j.message_id for j in run(lambda q: q.by_state(QUEUED, 0, 10))] == ["b1", "b3"]


def identify_job(message_id: str, person: str) -> NewJob:
    return NewJob(message_id, person, {"kind": "identify", "message_id": message_id})


def waits_for_contact(clock: Clock, seconds: float = 100) -> Outcome:
    """How the worker settles a Track whose contact is not found yet (policy WAITING_FOR_CONTACT)."""
    error = {"code": 5, "reason": "CONTACT_NOT_FOUND", "message": "waiting up to 600 s for the contact"}
    return Outcome(RETRYING, error=error, next_attempt_at=clock.now + seconds)


def test_identifies_go_before_a_track_waiting_for_its_contact_and_nothing_else_does(
    store: tuple[Run, Clock],
) -> None:
    """A track accepted before its identify must not wait for an identify that waits for it: while the
    track waits, the person's identifies (in their order) go first; the other events stay behind it."""
    run, clock = store
    enqueue_all(
        run, job("t1", "p"), job("x", "p"), identify_job("i1", "p"), job("y", "p"), identify_job("i2", "p")
    )
    assert claim(run) == ["t1"]
    settle(run, "t1", waits_for_contact(clock))
    assert claim(run) == ["i1"]  # x stays behind the waiting track
    assert claim(run, "b") == []  # one of a person at a time: i2 waits for i1
    settle(run, "i1", Outcome(DELIVERED))
    woken = run(lambda q: q.get("t1"))
    assert (woken.state, woken.next_attempt_at) == (RETRYING, clock.now)  # due now, not in 100 s
    assert claim(run) == ["i2"]  # identifies first, in their order: the track waits for every one
    settle(run, "i2", Outcome(DELIVERED))
    assert claim(run) == ["t1"]
    assert claim(run, "b") == []
    settle(run, "t1", Outcome(DELIVERED))
    assert claim(run) == ["x"]
    settle(run, "x", Outcome(DELIVERED))
    assert claim(run) == ["y"]


def test_only_a_wait_for_the_contact_lets_identifies_pass(store: tuple[Run, Clock]) -> None:
    run, clock = store
    enqueue_all(run, job("t1", "p"), identify_job("i1", "p"), job("u1", "u"), identify_job("i2", "u"))
    assert sorted(claim(run)) == ["t1", "u1"]
    unavailable = {"code": 14, "reason": "TRENGO_UNAVAILABLE", "message": "503"}
    settle(run, "t1", Outcome(RETRYING, error=unavailable, next_attempt_at=clock.now + 10))
    settle(run, "u1", waits_for_contact(clock, 10))
    assert claim(run) == ["i2"]  # u1 waits for its contact; t1 waits for Trengo: i1 stays behind it
    settle(run, "i2", Outcome(FAILED, error={"reason": "TRENGO_REJECTED"}))
    assert run(lambda q: q.get("u1")).next_attempt_at == clock.now + 10  # a failed identify wakes nothing
    clock.now += 10
    assert sorted(claim(run)) == ["t1", "u1"]  # no identify left behind u1: it is tried again itself


def test_a_retried_event_ahead_of_a_waiting_track_keeps_the_identify_behind_it(
    store: tuple[Run, Clock],
) -> None:
    """An operator's retry puts a failed event back at its place: ahead of the waiting track, it is the
    person's head again, and the identify behind the track waits for it."""
    run, clock = store
    enqueue_all(run, job("old", "p"), job("t1", "p"), identify_job("i1", "p"))
    claim(run)
    settle(run, "old", Outcome(FAILED, error={"reason": "TRENGO_REJECTED"}))
    assert claim(run) == ["t1"]
    settle(run, "t1", waits_for_contact(clock))
    run(lambda q: q.retry_failed(["old"]))
    assert claim(run) == ["old"]
    assert claim(run, "b") == []
    settle(run, "old", Outcome(DELIVERED))
    assert claim(run) == ["i1"]

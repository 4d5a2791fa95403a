"""One contract for every state backend: memory, SQLite and a real PostgreSQL, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import StoreError
from sidecar.state import ContactRecord, State, StoredResult, mask_url, open_state
from tests.support.harness import free_port
from tests.support.postgres import PASSWORD

BACKENDS = ("memory", "sqlite", "postgres")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory:"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_url"))


def run(url: str, clock: FakeClock, scenario: Callable[[State], Any]) -> Any:
    """Run ``scenario(state)`` on a started backend, closed afterwards."""

    async def main() -> Any:
        state = open_state(url, clock=clock)
        await state.start()
        try:
            return await scenario(state)
        finally:
            await state.aclose()

    return asyncio.run(main())


# --- rate slots -------------------------------------------------------------------------------------


def test_a_full_window_tells_how_long_until_the_oldest_slot_frees(url, clock):
    async def scenario(state: State) -> None:
        for _ in range(3):
            assert (await state.acquire_slot("t", 3, 10.0)).wait == 0
            clock.advance(1)
        full = await state.acquire_slot("t", 3, 10.0)
        assert full.wait == pytest.approx(7.0) and not full.held  # the first went at 0, frees at 10
        clock.advance(6.9)
        assert (await state.acquire_slot("t", 3, 10.0)).wait == pytest.approx(0.1)
        clock.advance(0.1)
        assert (await state.acquire_slot("t", 3, 10.0)).wait == 0
        assert (await state.acquire_slot("other", 3, 10.0)).wait == 0  # per key

    run(url, clock, scenario)


def test_an_answered_slot_counts_from_when_its_answer_came(url, clock):
    """A call's log entry moves to its answer's time, which is after its arrival at Trengo: a call
    slow on its way can no longer make the next window's first call land inside Trengo's window."""

    async def scenario(state: State) -> None:
        taken = []
        for _ in range(3):
            decision = await state.acquire_slot("t", 3, 10.0)
            assert decision.wait == 0 and decision.at is not None
            taken.append(decision.at)
            clock.advance(1)
        clock.advance(2)  # t=5: the first call (logged at 0) is answered only now
        await state.slot_answered("t", taken[0])
        await state.slot_answered("t", taken[0] - 100)  # an entry the log no longer has: nothing happens
        clock.advance(6)  # t=11: the entry at 1 has freed a slot; the one answered at 5 still counts
        assert (await state.acquire_slot("t", 3, 10.0)).wait == 0
        full = await state.acquire_slot("t", 3, 10.0)
        assert full.wait == pytest.approx(1.0)  # the entry at 2 frees at 12 (the one at 5, at 15)
        clock.advance(1)
        assert (await state.acquire_slot("t", 3, 10.0)).wait == 0
        assert (await state.acquire_slot("t", 3, 10.0)).wait == pytest.approx(3.0)  # 5 + 10 - 12

    run(url, clock, scenario)


def test_a_refused_slot_is_not_logged(url, clock):
    async def scenario(state: State) -> None:
        assert (await state.acquire_slot("t", 1, 10.0)).wait == 0
        for _ in range(5):
            clock.advance(1)
            assert (await state.acquire_slot("t", 1, 10.0)).wait > 0
        clock.advance(5)  # 10 s after the only send
        assert (await state.acquire_slot("t", 1, 10.0)).wait == 0

    run(url, clock, scenario)


def test_a_hold_refuses_every_slot_until_it_ends_and_never_shortens(url, clock):
    async def scenario(state: State) -> None:
        await state.hold_slots("t", 5.0)
        held = await state.acquire_slot("t", 100, 60.0)
        assert held.held and held.wait == pytest.approx(5.0)
        await state.hold_slots("t", 1.0)  # a shorter hold does not shorten the first
        assert (await state.acquire_slot("t", 100, 60.0)).wait == pytest.approx(5.0)
        clock.advance(5.0)
        assert (await state.acquire_slot("t", 100, 60.0)).wait == 0
        assert (await state.acquire_slot("other", 100, 60.0)).wait == 0

    run(url, clock, scenario)


def test_concurrent_acquires_never_take_more_than_the_limit(url, clock):
    async def scenario(state: State) -> int:
        decisions = await asyncio.gather(*(state.acquire_slot("t", 5, 60.0) for _ in range(20)))
        return sum(1 for d in decisions if d.wait == 0)

    assert run(url, clock, scenario) == 5


# --- contacts ----------------------------------------------------------------------------------------


def test_a_contact_is_kept_with_its_name_until_it_expires(url, clock):
    async def scenario(state: State) -> None:
        assert await state.get_contact("email:ann@example.com") is None
        await state.put_contact("email:ann@example.com", ContactRecord(7, "Ann"), ttl=10)
        await state.put_contact("phone:+31612345678", ContactRecord(8, None), ttl=10)
        assert await state.get_contact("email:ann@example.com") == ContactRecord(7, "Ann")
        assert await state.get_contact("phone:+31612345678") == ContactRecord(8, None)
        await state.put_contact("email:ann@example.com", ContactRecord(7, "Ann B"), ttl=10)
        assert await state.get_contact("email:ann@example.com") == ContactRecord(7, "Ann B")
        clock.advance(10)
        assert await state.get_contact("email:ann@example.com") is None

    run(url, clock, scenario)


def test_a_discarded_contact_is_gone(url, clock):
    async def scenario(state: State) -> None:
        await state.put_contact("k", ContactRecord(7, "Ann"), ttl=100)
        await state.discard_contact("k")
        await state.discard_contact("never-there")
        assert await state.get_contact("k") is None

    run(url, clock, scenario)


# --- results -----------------------------------------------------------------------------------------


def test_the_first_result_of_a_message_id_wins_until_it_expires(url, clock):
    first = StoredResult(outcome={"action": "create_ticket", "ticket_id": 5, "name": "Zoë"})
    second = StoredResult(error={"reason": "TRENGO_OUTCOME_UNKNOWN", "message": "lost"})

    async def scenario(state: State) -> None:
        assert await state.get_result("m1") is None
        await state.put_result("m1", first, ttl=10)
        await state.put_result("m1", second, ttl=10)
        assert await state.get_result("m1") == first
        clock.advance(10)
        assert await state.get_result("m1") is None
        await state.put_result("m1", second, ttl=10)  # expired: a new one may be stored
        assert await state.get_result("m1") == second

    run(url, clock, scenario)


def test_a_discarded_result_is_gone_and_a_new_one_may_be_stored(url, clock):
    mark = StoredResult(error={"reason": "TRENGO_OUTCOME_UNKNOWN", "message": "write started"})
    done = StoredResult(outcome={"action": "create_ticket", "ticket_id": 7})

    async def scenario(state: State) -> None:
        await state.put_result("m1", mark, ttl=10)
        await state.put_result("other", mark, ttl=10)
        await state.discard_result("m1")
        await state.discard_result("never-there")
        assert await state.get_result("m1") is None
        assert await state.get_result("other") == mark  # only that key
        await state.put_result("m1", done, ttl=10)
        assert await state.get_result("m1") == done

    run(url, clock, scenario)


# --- locks -------------------------------------------------------------------------------------------


def test_a_flight_lock_has_one_holder_at_a_time(url, clock):
    async def scenario(state: State) -> list[str]:
        events: list[str] = []

        async def hold(name: str) -> None:
            async with state.flight_lock("contact:ann"):
                events.append(f"{name} in")
                await asyncio.sleep(0.1)
                events.append(f"{name} out")

        await asyncio.gather(hold("a"), hold("b"), hold("c"))
        return events

    events = run(url, clock, scenario)
    assert [e.split()[1] for e in events] == ["in", "out"] * 3
    assert all(events[i].split()[0] == events[i + 1].split()[0] for i in range(0, 6, 2))


def test_a_flight_lock_is_released_when_its_block_fails(url, clock):
    async def scenario(state: State) -> None:
        with pytest.raises(ZeroDivisionError):
            async with state.flight_lock("k"):
                raise ZeroDivisionError
        async with asyncio.timeout(2), state.flight_lock("k"):
            pass

    run(url, clock, scenario)


def test_a_flight_lock_waiter_can_give_up(url, clock):
    async def scenario(state: State) -> None:
        async with state.flight_lock("k"):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2), state.flight_lock("k"):
                    pass
        async with asyncio.timeout(2), state.flight_lock("k"):  # the waiter left nothing behind
            pass

    run(url, clock, scenario)


# --- schema, failures ----------------------------------------------------------------------------


def test_many_sidecars_starting_at_once_migrate_once(url, clock):
    async def main() -> None:
        states = [open_state(url, clock=clock) for _ in range(6)]
        try:
            await asyncio.gather(*(s.start() for s in states))
            await states[0].put_contact("k", ContactRecord(1, "A"), ttl=10)
            if url != "memory:":  # shared backends: every one sees what another wrote
                assert all([await s.get_contact("k") == ContactRecord(1, "A") for s in states])
        finally:
            for s in states:
                await s.aclose()

    asyncio.run(main())


@pytest.fixture
def unreachable() -> Iterator[str]:
    yield f"postgresql://sidecar:{PASSWORD}@127.0.0.1:{free_port()}/postgres?connect_timeout=1"


def test_an_unreachable_postgres_is_a_store_error_without_the_password(unreachable):
    async def main() -> StoreError:
        state = open_state(unreachable)
        state.pool.timeout = 1.0  # type: ignore[attr-defined]
        try:
            with pytest.raises(StoreError) as caught:
                await state.start()
            return caught.value
        finally:
            await state.aclose()

    error = asyncio.run(main())
    assert error.reason == "STORE_UNAVAILABLE" and error.retry_after
    assert PASSWORD not in str(error) and "127.0.0.1" in str(error)


def test_the_password_is_masked_in_a_store_url():
    masked = mask_url(f"postgresql://u:{PASSWORD}@db:5432/x?sslmode=require&password={PASSWORD}")
    assert PASSWORD not in masked and "sslmode=require" in masked and masked.startswith("postgresql://u:****@db")


@pytest.fixture(params=("sqlite", "postgres"))
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The backends several sidecars can share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_url"))


def test_two_sidecars_on_one_store_exclude_each_other(shared_url, clock):
    """Two states on one URL stand for two sidecars: a lock one holds, the other waits for."""
    url = shared_url

    async def main() -> list[str]:
        first, second = open_state(url, clock=clock), open_state(url, clock=clock)
        await first.start()
        await second.start()
        events: list[str] = []

        async def hold(state: State, name: str) -> None:
            async with state.flight_lock("contact:ann", outer=name == "a"):
                events.append(f"{name} in")
                await asyncio.sleep(0.2)
                events.append(f"{name} out")

        try:
            await asyncio.gather(hold(first, "a"), hold(second, "b"))
        finally:
            await first.aclose()
            await second.aclose()
        return events

    events = asyncio.run(main())
    assert events in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"]), events

"""The rate limiter as the policy over a slot store: shared logs, Trengo's hold named, never fail open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.deadline import Deadline
from sidecar.errors import ResourceExhausted, StoreError
from sidecar.state import open_state
from sidecar.trengo_api.ratelimit import RateLimiter
from tests.support.harness import free_port
from tests.support.postgres import PASSWORD


def test_after_a_429_the_error_names_trengos_hold_not_the_sidecars_limit():
    async def scenario() -> str:
        limiter = RateLimiter(120, 10)
        limiter.penalise(5.0)  # Trengo said 429, Retry-After: 5
        with pytest.raises(ResourceExhausted) as caught:
            await limiter.acquire(Deadline.after(0.5))
        assert caught.value.retry_after is not None and 4 < caught.value.retry_after <= 5
        return caught.value.message

    message = asyncio.run(scenario())
    assert "429" in message and "Retry-After" in message and "120/min" not in message


def test_without_a_429_the_error_names_the_sidecars_own_limit():
    async def scenario() -> str:
        limiter = RateLimiter(1, 10, window=30)
        await limiter.acquire(Deadline.after(1))
        with pytest.raises(ResourceExhausted) as caught:
            await limiter.acquire(Deadline.after(0.3))
        return caught.value.message

    assert "no Trengo rate-limit slot (1/min)" in asyncio.run(scenario())


def test_two_limiters_on_one_store_share_the_tokens_slots(tmp_path: Path):
    async def scenario() -> list[bool]:
        store = f"sqlite:///{tmp_path}/state.db"
        one, two = open_state(store), open_state(store)  # two sidecars' states on one file
        await one.start()
        await two.start()
        try:
            limiters = [RateLimiter(3, 10, s, key="token-hash", window=30) for s in (one, two)]
            got = []
            for n in range(5):
                try:
                    await limiters[n % 2].acquire(Deadline.after(0.3))
                    got.append(True)
                except ResourceExhausted:
                    got.append(False)
            held = RateLimiter(3, 10, one, key="another-token", window=30)
            await held.acquire(Deadline.after(0.3))  # another token's log is its own
            return got
        finally:
            await one.aclose()
            await two.aclose()

    assert asyncio.run(scenario()) == [True, True, True, False, False]


def test_an_unreachable_store_never_lets_a_call_through():
    async def scenario() -> StoreError:
        state = open_state(f"postgresql://sidecar:{PASSWORD}@127.0.0.1:{free_port()}/x?connect_timeout=1")
        try:
            with pytest.raises(StoreError):
                await state.start()  # as a sidecar starting with its store down: it goes on
            limiter = RateLimiter(120, 10, state, key="token-hash")
            with pytest.raises(StoreError) as caught:
                await limiter.acquire(Deadline.after(1.5))
            return caught.value
        finally:
            await state.aclose()

    error = asyncio.run(scenario())
    assert error.reason == "STORE_UNAVAILABLE" and error.retry_after and PASSWORD not in error.message

"""After a PostgreSQL outage the store reopens its pools' connections by itself, in the background.

psycopg_pool alone retries a lost connection with a doubling backoff, so after an outage of a few
seconds the pools reconnected seconds after the server was back, and the first callers spent their
deadline waiting for a connection. Here nothing calls the store after the outage: the pools must be
ready all the same.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sidecar.errors import StoreError
from sidecar.state.postgres import PostgresState
from tests.support.postgres import Postgres


async def _all_pools_ready(state: PostgresState, within: float) -> bool:
    """Whether every pool has an idle connection ready, polled for at most ``within`` seconds."""
    pools = (state.pool, *state._lock_pools.values())
    give_up = time.monotonic() + within
    while time.monotonic() < give_up:
        if state.reachable and all(p.get_stats().get("pool_available", 0) >= 1 for p in pools):
            return True
        await asyncio.sleep(0.05)
    return False


def test_the_pools_reopen_in_the_background_once_postgres_is_back(postgres: Postgres, pg_url: str):
    async def scenario() -> None:
        state = PostgresState(pg_url)
        await state.start()
        try:
            await state.acquire_slot("t", 100, 60.0)
            async with state.flight_lock("message", outer=True), state.flight_lock("person"):
                pass
            postgres.stop()
            for _ in range(3):  # callers meet the outage (and the pools give up their own retries)
                with pytest.raises(StoreError):
                    await state.acquire_slot("t", 100, 60.0)
                await asyncio.sleep(0.3)
            assert not state.reachable
            postgres.start()
            # No caller from here on: every pool, the lock pools included (they keep no idle
            # connection of their own), has a fresh connection waiting before anyone asks.
            assert await _all_pools_ready(state, within=15), [p.get_stats() for p in (state.pool,)]
            assert (await state.acquire_slot("t", 100, 60.0)).wait == 0
        finally:
            if not postgres.running():
                postgres.start()
            await state.aclose()

    asyncio.run(scenario())

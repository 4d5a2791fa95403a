"""Promises of docs/guarantees.md that no other test held to: each one broken here on purpose.

(Its table "Each promise and the test that breaks it" names the test of every promise;
tests/project/test_docs.py checks that each named test exists.)
"""

from __future__ import annotations

import asyncio

from sidecar.deadline import Deadline
from sidecar.trengo_api import ratelimit
from tests.support.harness import struct
from trengo.sidecar.v1 import sidecar_pb2 as pb

TICKETS = "/api/v2/tickets"


def track(message_id: str, dry_run: bool = False) -> pb.TrackRequest:
    return pb.TrackRequest(
        event="Checked Out", message_id=message_id, dry_run=dry_run,
        context=struct({"traits": {"email": "ann@example.com"}}),
    )  # fmt: skip


def test_a_dry_run_neither_uses_nor_fills_the_message_id_memory(stub, control, ann):
    dry = stub.Track(track("m-dry", dry_run=True), timeout=10)
    assert dry.dry_run and not dry.replayed and control.tickets() == []
    real = stub.Track(track("m-dry"), timeout=10)  # not answered with the dry run's result
    assert not real.dry_run and not real.replayed and real.ticket_id > 0
    again = stub.Track(track("m-dry", dry_run=True), timeout=10)  # not answered with the real one either
    assert again.dry_run and not again.replayed and again.ticket_id == 0
    assert len(control.tickets()) == 1
    assert stub.Track(track("m-dry"), timeout=10).replayed  # the real result is still kept


def test_calls_waiting_for_a_rate_limit_slot_get_them_in_arrival_order():
    """FIFO: a call that waits longer is never overtaken by one that came after it."""

    async def scenario() -> list[int]:
        limiter = ratelimit.RateLimiter(per_minute=1, max_waiting=20, window=0.05)
        deadline = Deadline.after(10)
        await limiter.acquire(deadline)  # the window is full: everyone after this waits
        served: list[int] = []

        async def call(n: int) -> None:
            await limiter.acquire(deadline)
            served.append(n)

        waiters = []
        for n in range(8):
            waiters.append(asyncio.ensure_future(call(n)))
            await asyncio.sleep(0.005)  # arrival order is creation order
        await asyncio.gather(*waiters)
        return served

    assert asyncio.run(scenario()) == list(range(8))

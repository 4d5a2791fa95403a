"""The Python client's Deliver stream, WatchDeliveries, ListDeliveries and RetryDeliveries (blocking and
asyncio), against a real sidecar and the simulator; the simulator's records say what was written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from trengo_sidecar_client import (
    AsyncTrengoSidecarClient,
    Delivered,
    DeliveryPage,
    DeliveryState,
    DeliveryUpdate,
    FailedPrecondition,
    NotFound,
    TrengoSidecarClient,
    Unauthenticated,
)

from tests.support.queue_helpers import FAST_QUEUE, wait_for

TICKETS = "/api/v2/tickets"
ANN = {"traits": {"email": "ann@example.com"}}


def events() -> list[tuple[str, dict]]:
    return [
        ("a", {"type": "identify", "userId": "ann", "traits": {"email": "ann@example.com", "name": "Ann"}}),
        ("b", {"type": "track", "userId": "ann", "event": "Product Purchased", "context": ANN}),
        ("c", {"type": "track", "userId": "ann", "event": "Not Mapped", "context": ANN}),
        ("d", {"type": "track", "userId": "ann", "event": "Checked Out", "context": ANN}),
    ]


def check_delivered(answers: list[Delivered], control) -> None:
    by_id = {answer.id: answer for answer in answers}
    assert sorted(by_id) == ["a", "b", "c", "d"]
    assert by_id["a"].ok and by_id["a"].result.action == "create_contact"
    assert by_id["b"].result.ticket_id > 0 and by_id["d"].result.ticket_id > 0
    assert not by_id["c"].ok and by_id["c"].result is None
    assert (by_id["c"].error.code, by_id["c"].error.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                                "EVENT_NOT_MAPPED")
    tickets = sorted(control.tickets(), key=lambda t: t["id"])
    assert [t["id"] for t in tickets] == [by_id["b"].result.ticket_id, by_id["d"].result.ticket_id]
    assert [t["subject"] for t in tickets] == ["Product Purchased from our store", "Cart was checked out"]
    assert [c["id"] for c in control.contacts()] == [by_id["a"].result.contact_id]


def test_deliver_streams_events_and_answers_each_with_its_result_or_error(make_sidecar, control):
    sidecar = make_sidecar()
    with TrengoSidecarClient(sidecar.address) as client:
        answers = list(client.deliver(events()))
        assert all(isinstance(answer, Delivered) for answer in answers)
        check_delivered(answers, control)
        dry = list(client.deliver([("x", {"type": "identify", "traits": {"email": "bob@example.com"}})],
                                  dry_run=True))
    assert dry[0].result.dry_run and len(control.contacts()) == 1  # nothing written by the dry run


def test_the_async_client_delivers_from_an_async_iterable(make_sidecar, control):
    sidecar = make_sidecar()

    async def produce() -> AsyncIterator[tuple[str, dict]]:
        for item in events():
            yield item

    async def main() -> list[Delivered]:
        async with AsyncTrengoSidecarClient(sidecar.address) as client:
            return [answer async for answer in client.deliver(produce())]

    check_delivered(asyncio.run(main()), control)


def test_a_stream_without_the_auth_token_raises_unauthenticated(make_sidecar, control):
    sidecar = make_sidecar(authToken="stream-secret")
    with TrengoSidecarClient(sidecar.address) as client, pytest.raises(Unauthenticated):
        list(client.deliver(events()))
    with TrengoSidecarClient(sidecar.address, auth_token="stream-secret") as client:
        assert len(list(client.deliver(events()[:1]))) == 1
    assert len(control.contacts()) == 1


@pytest.fixture
def queue_client(make_sidecar, tmp_path: Path):
    sidecar = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE)
    with TrengoSidecarClient(sidecar.address) as client:
        yield sidecar, client


def failed_order(client: TrengoSidecarClient, control) -> str:
    """Ann identified, then her order refused once by Trengo (422): failed for good."""
    client.enqueue_identify(email="ann@example.com", user_id="ann", message_id="ann-1")
    control.add_fault(method="POST", path=TICKETS, status=422, count=1)
    client.enqueue_track("Order", email="ann@example.com", user_id="ann", properties={"n": 1},
                         message_id="o-1")
    wait_for(lambda: client.get_delivery("o-1").state is DeliveryState.FAILED, "o-1 to fail")
    return "o-1"


def test_list_retry_and_watch_follow_a_failed_event_to_delivered(queue_client, control):
    _, client = queue_client
    failed_order(client, control)
    page = client.list_deliveries()
    assert isinstance(page, DeliveryPage) and page.next_page_token == ""
    assert [(s.message_id, s.error.reason) for s in page.deliveries] == [("o-1", "TRENGO_REJECTED")]
    assert [s.message_id for s in client.list_deliveries("delivered").deliveries] == ["ann-1"]
    with pytest.raises(FailedPrecondition):
        client.retry_deliveries(["ann-1"])  # delivered, not failed
    with pytest.raises(NotFound):
        client.retry_deliveries(["nobody"])
    assert client.retry_deliveries(["o-1"]) == 1

    seen: list[DeliveryUpdate] = []
    for update in client.watch_deliveries(timeout=30):
        seen.append(update)
        if update.status.message_id == "o-1" and update.status.state is DeliveryState.DELIVERED:
            break
    states = [u.status.state.value for u in seen if u.status.message_id == "o-1"]
    assert states[-3:] == ["queued", "delivering", "delivered"] and "failed" in states, states
    assert [u.cursor for u in seen] == sorted({u.cursor for u in seen})
    resumed = client.watch_deliveries(cursor=seen[-3].cursor, timeout=30)
    assert [next(resumed).cursor, next(resumed).cursor] == [u.cursor for u in seen[-2:]]
    resumed.close()
    ticket = client.get_delivery("o-1").result.ticket_id
    posts = control.requests(path_prefix=TICKETS, method="POST")
    assert [r["status"] for r in posts] == [422, 201] and [t["id"] for t in control.tickets()] == [ticket]
    assert client.list_deliveries().deliveries == ()


def test_the_async_client_lists_retries_and_watches(queue_client, control):
    sidecar, blocking = queue_client
    failed_order(blocking, control)

    async def main() -> list[str]:
        async with AsyncTrengoSidecarClient(sidecar.address) as client:
            assert [s.message_id for s in (await client.list_deliveries(limit=5)).deliveries] == ["o-1"]
            assert await client.retry_deliveries(all_failed=True) == 1
            states = []
            async for update in client.watch_deliveries():
                if update.status.message_id == "o-1":
                    states.append(update.status.state.value)
                    if update.status.state is DeliveryState.DELIVERED:
                        return states
        raise AssertionError("the watch ended")

    states = asyncio.run(asyncio.wait_for(main(), 30))
    assert states[-3:] == ["queued", "delivering", "delivered"], states
    assert [r["status"] for r in control.requests(path_prefix=TICKETS, method="POST")] == [422, 201]

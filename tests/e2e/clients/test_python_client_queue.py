"""The Python client's Enqueue and GetDelivery, against a real sidecar on a SQLite store and the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from trengo_sidecar_client import (
    AsyncTrengoSidecarClient,
    DeliveryError,
    DeliveryResult,
    DeliveryState,
    DeliveryStatus,
    Enqueued,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TrengoSidecarClient,
)

from tests.support.harness import EMAIL_CHANNEL
from tests.support.queue_helpers import FAST_QUEUE, wait_for

TERMINAL = (DeliveryState.DELIVERED, DeliveryState.FAILED)


@pytest.fixture
def client(make_sidecar, tmp_path: Path):
    sidecar = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE)
    with TrengoSidecarClient(sidecar.address, timeout=10) as c:
        yield c


def settled(client: TrengoSidecarClient, message_id: str) -> DeliveryStatus:
    def done() -> DeliveryStatus | None:
        status = client.get_delivery(message_id)
        return status if status.state in TERMINAL else None

    return wait_for(done, f"{message_id} to settle")


def test_enqueued_events_are_delivered_and_reported_as_typed_statuses(client, control):
    started = datetime.now(UTC)
    first = client.enqueue_identify(email="ann@example.com", name="Ann Lee", user_id="ann", message_id="m-1")
    assert isinstance(first, Enqueued) and (first.message_id, first.duplicate) == ("m-1", False)
    assert first.filtered_reason == ""
    ticket = client.enqueue_track("Checked Out", email="ann@example.com", user_id="ann")
    assert len(ticket.message_id) == 32 and not ticket.duplicate  # generated: the event had none
    raw = client.enqueue_send_event({"type": "track", "event": "Product Purchased", "userId": "ann",
                                     "messageId": "m-3", "properties": {"email": "ann@example.com"}})
    assert raw.message_id == "m-3"

    identified = settled(client, "m-1")
    assert isinstance(identified, DeliveryStatus) and identified.state is DeliveryState.DELIVERED
    assert identified.attempts == 1 and identified.error is None and identified.next_attempt_at is None
    assert started.replace(microsecond=0) <= identified.accepted_at <= datetime.now(UTC)
    assert identified.accepted_at.tzinfo is not None
    assert isinstance(identified.result, DeliveryResult) and identified.result.message_id == "m-1"
    [contact] = control.contacts()
    assert identified.result.contact_id == contact["id"] and contact["name"] == "Ann Lee"
    delivered = [settled(client, message_id) for message_id in (ticket.message_id, "m-3")]
    # Read the simulator once both have settled: a ticket is stored only when its delivery is done.
    tickets = {t["id"]: t for t in control.tickets()}
    for done in delivered:
        assert done.state is DeliveryState.DELIVERED and done.result is not None
        assert tickets[done.result.ticket_id]["contact_id"] == contact["id"]
    assert sorted(t["subject"] for t in tickets.values()) == [
        "Cart was checked out", "Product Purchased from our store"]  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        identified.attempts = 2  # type: ignore[misc]

    again = client.enqueue_identify(email="ann@example.com", name="Ann Lee", user_id="ann", message_id="m-1")
    assert again.duplicate and len(control.contacts()) == 1


def test_a_rejected_event_fails_with_a_typed_error_and_a_retrying_one_says_when(client, control):
    control.add_contact(name="Bo", identifier="bo@example.com", channel_id=EMAIL_CHANNEL)
    control.add_fault(method="POST", path="/api/v2/tickets", status=422, count=1)
    rejected = client.enqueue_track("Checked Out", email="bo@example.com", user_id="bo", message_id="m-422")
    failed = settled(client, rejected.message_id)
    assert failed.state is DeliveryState.FAILED and failed.result is None
    assert isinstance(failed.error, DeliveryError) and failed.error.reason == "TRENGO_REJECTED"
    assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION and "422" in failed.error.message

    control.add_fault(method="POST", path="/api/v2/tickets", status=503, count=1000)
    down = client.enqueue_track("Checked Out", email="bo@example.com", user_id="bo")

    def retrying() -> Any:
        status = client.get_delivery(down.message_id)
        return status if status.state is DeliveryState.RETRYING else None

    status = wait_for(retrying, "a retrying status")
    assert status.error is not None and status.error.code == grpc.StatusCode.UNAVAILABLE
    assert status.next_attempt_at is not None and status.next_attempt_at >= status.accepted_at
    control.clear_faults()
    assert settled(client, down.message_id).state is DeliveryState.DELIVERED


def test_errors_are_mapped_as_for_the_synchronous_calls_and_nothing_is_queued(client, make_sidecar, control):
    with pytest.raises(InvalidArgument) as caught:
        client.enqueue_identify(email="not an email", message_id="bad")
    assert caught.value.field == "traits.email" and caught.value.reason == "INVALID_EVENT"
    with pytest.raises(FailedPrecondition) as unmapped:
        client.enqueue_track("Page Viewed", email="ann@example.com", message_id="unmapped")
    assert unmapped.value.reason == "EVENT_NOT_MAPPED"
    for never in ("bad", "unmapped", "no-such-id"):
        with pytest.raises(NotFound) as missing:
            client.get_delivery(never)
        assert (missing.value.reason, missing.value.code) == ("DELIVERY_NOT_FOUND", grpc.StatusCode.NOT_FOUND)
    with pytest.raises(InvalidArgument) as empty:
        client.get_delivery("")
    assert empty.value.field == "message_id"
    time.sleep(0.3)  # a worker that wrongly queued them would have called Trengo by now
    assert control.requests(method="POST") == []

    memory = make_sidecar(store="memory:")
    with TrengoSidecarClient(memory.address) as c, pytest.raises(FailedPrecondition) as refused:
        c.enqueue_identify(email="ann@example.com")
    assert refused.value.reason == "STORE_NOT_DURABLE" and "store" in refused.value.message


def test_the_async_client_enqueues_and_reads_deliveries_too(make_sidecar, tmp_path: Path, control):
    sidecar = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE)

    async def scenario() -> DeliveryStatus:
        async with AsyncTrengoSidecarClient(sidecar.address, timeout=10) as c:
            accepted = await c.enqueue_identify(email="cy@example.com", name="Cy", message_id="a-1")
            assert accepted == Enqueued("a-1", request_id=accepted.request_id)
            await c.enqueue_track("Checked Out", email="cy@example.com", message_id="a-2")
            sent = await c.enqueue_send_event({"type": "identify", "messageId": "a-1",
                                               "context": {"traits": {"email": "cy@example.com"}}})
            assert sent.duplicate
            with pytest.raises(NotFound):
                await c.get_delivery("nope")
            ends = time.monotonic() + 20
            while (status := await c.get_delivery("a-2")).state not in TERMINAL:
                assert time.monotonic() < ends, "a-2 did not settle"
                await asyncio.sleep(0.05)
            return status

    status = asyncio.run(scenario())
    assert status.state is DeliveryState.DELIVERED and status.result is not None
    [ticket] = control.tickets()
    assert ticket["id"] == status.result.ticket_id and ticket["subject"] == "Cart was checked out"

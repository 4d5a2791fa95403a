"""The Python client (clients/python) against the real sidecar on a real port and the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import grpc
import pytest
from trengo_sidecar_client import (
    Action,
    AsyncTrengoSidecarClient,
    DeadlineExceeded,
    DeliveryResult,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RateLimited,
    SidecarError,
    TrengoSidecarClient,
    Unauthenticated,
    Unavailable,
)

from tests.support.harness import EMAIL_CHANNEL, SMS_CHANNEL, free_port


@pytest.fixture
def client(sidecar):
    with TrengoSidecarClient(sidecar.address, timeout=10) as c:
        yield c


def test_identify_creates_the_contact_and_returns_a_frozen_result(client, control):
    result = client.identify(
        email="ann@example.com",
        traits={"firstName": "Ann", "lastName": "Lee"},
        user_id="u1",
        message_id="m-1",
    )
    assert isinstance(result, DeliveryResult) and result.action is Action.CREATE_CONTACT
    assert result.action == "create_contact" and result.channel_id == EMAIL_CHANNEL
    assert result.message_id == "m-1" and not result.dry_run and not result.replayed
    assert result.request_id
    [contact] = control.contacts()
    assert contact["id"] == result.contact_id and contact["name"] == "Ann Lee"
    assert [c.method for c in result.requests] == ["GET", "POST"]  # e-mail: created without a search
    assert isinstance(result.requests, tuple) and result.requests[1].status_code == 201
    assert result.requests[1].body == control.requests(method="POST")[0]["body"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.contact_id = 1  # type: ignore[misc]
    again = client.identify(email="ann@example.com", name="Ann B. Lee", message_id="m-2")
    assert again.action is Action.UPDATE_CONTACT and again.contact_cache_hit
    assert control.requests(method="PUT")[0]["body"] == {"name": "Ann B. Lee"}


def test_track_opens_a_ticket_with_the_rendered_subject(client, control):
    contact = client.identify(email="ann@example.com", name="Ann")
    result = client.track("Added to cart", email="ann@example.com", properties={"revenue": 2000})
    assert result.action is Action.CREATE_TICKET and result.contact_id == contact.contact_id
    [ticket] = control.tickets()
    assert ticket["id"] == result.ticket_id and ticket["subject"] == "Product was of value:2000"
    assert ticket["contact_id"] == contact.contact_id


def test_channel_and_contact_ids_become_external_ids(client, control):
    phone = client.identify(phone="+31 6 1234 5678", name="Piet", channel_id=SMS_CHANNEL)
    assert phone.channel_id == SMS_CHANNEL and phone.action is Action.CREATE_CONTACT
    assert control.requests(method="POST")[0]["path"] == f"/api/v2/channels/{SMS_CHANNEL}/contacts"
    existing = control.add_contact(name="Old", identifier="bo@example.com", channel_id=EMAIL_CHANNEL)
    before = len(control.requests())
    ticket = client.track("Checked Out", contact_id=existing["id"])
    assert ticket.contact_id == existing["id"] and ticket.action is Action.CREATE_TICKET
    [stored] = control.tickets()
    assert stored["id"] == ticket.ticket_id and stored["contact_id"] == existing["id"]
    assert [r["method"] for r in control.requests()[before:]] == ["POST"]  # no search


def test_send_event_takes_rudderstack_json(client, control):
    created = client.send_event(
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "m-9",
            "context": {"traits": {"email": "bob@example.com", "firstName": "Bob"}},
            "traits": {"lastName": "Stone"},
        }
    )
    assert created.action is Action.CREATE_CONTACT and created.message_id == "m-9"
    assert control.contacts()[0]["name"] == "Bob Stone"
    ticket = client.send_event(
        {"type": "track", "event": "Product Purchased", "properties": {"email": "bob@example.com"}}
    )
    assert ticket.action is Action.CREATE_TICKET and ticket.contact_id == created.contact_id
    [stored] = control.tickets()
    assert stored["id"] == ticket.ticket_id and stored["contact_id"] == created.contact_id
    assert stored["subject"] == "Product Purchased from our store"


def test_dry_run_lists_the_write_but_sends_none(client, control):
    result = client.identify(email="d@example.com", name="D", dry_run=True)
    assert result.dry_run and result.action is Action.CREATE_CONTACT and result.contact_id == 0
    would = result.requests[-1]
    assert would.method == "POST" and would.attempts == 0 and would.headers["Authorization"] == "Bearer ****"
    assert not control.requests(method="POST") and control.contacts() == []


def test_message_id_replays_the_first_result(client, control):
    first = client.identify(email="r@example.com", name="R", message_id="same")
    second = client.identify(email="r@example.com", name="R", message_id="same")
    assert second.replayed and second.contact_id == first.contact_id
    assert len(control.requests(method="POST")) == 1


@pytest.mark.parametrize(
    ("kwargs", "reason", "field"),
    [
        ({"name": "No identifier"}, "MISSING_IDENTIFIER", "traits.email"),
        ({"email": "not an email"}, "INVALID_EVENT", "traits.email"),
        ({"email": "a@b.io", "context": {"traits": "x"}}, "INVALID_EVENT", "context.traits"),
    ],
)
def test_invalid_identify_is_invalid_argument_naming_the_field(client, control, kwargs, reason, field):
    with pytest.raises(InvalidArgument) as caught:
        client.identify(**kwargs)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.field == field
    assert error.reason == reason and error.request_id
    assert not error.retryable and isinstance(error.__cause__, grpc.RpcError)
    assert control.requests() == []


def test_send_event_invalid_names_the_event_field(client, control):
    with pytest.raises(InvalidArgument) as caught:
        client.send_event({"type": "page"})
    assert caught.value.field == "event.type" and caught.value.reason == "INVALID_EVENT"
    assert control.requests() == []


def test_unmapped_event_is_failed_precondition(client, control):
    with pytest.raises(FailedPrecondition) as caught:
        client.track("Page Viewed", email="ann@example.com")
    assert caught.value.reason == "EVENT_NOT_MAPPED" and "Page Viewed" in caught.value.message
    assert not caught.value.retryable and control.requests() == []


def test_track_for_an_unknown_person_is_not_found(client, control):
    with pytest.raises(NotFound) as caught:
        client.track("Checked Out", email="nobody@example.com")
    assert caught.value.reason == "CONTACT_NOT_FOUND" and caught.value.code == grpc.StatusCode.NOT_FOUND
    assert control.tickets() == []


def test_trengo_rate_limit_is_rate_limited_with_a_retry_delay(make_sidecar, control):
    sidecar = make_sidecar(maxAttempts=1)
    control.add_fault(method="POST", path="/api/v2/channels/", status=429, headers={"Retry-After": "7"})
    with TrengoSidecarClient(sidecar.address) as c, pytest.raises(RateLimited) as caught:
        c.identify(email="ann@example.com")
    assert caught.value.reason == "RATE_LIMITED" and caught.value.retry_delay == pytest.approx(7, abs=1)
    assert caught.value.retryable


def test_trengo_down_is_unavailable_and_retryable(make_sidecar, control):
    sidecar = make_sidecar(maxAttempts=2)
    control.add_fault(method="POST", path="/api/v2/channels/", status=503, count=5)
    with TrengoSidecarClient(sidecar.address) as c, pytest.raises(Unavailable) as caught:
        c.identify(email="ann@example.com")
    assert caught.value.reason == "TRENGO_UNAVAILABLE" and caught.value.retryable


def test_no_sidecar_listening_is_unavailable():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with TrengoSidecarClient(address, timeout=2) as c, pytest.raises(Unavailable) as caught:
        c.identify(email="ann@example.com")
    assert caught.value.reason is None and caught.value.retryable


def test_timeout_is_deadline_exceeded():
    with socket.socket() as silent:  # accepts TCP (the backlog) but never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with (
            TrengoSidecarClient(f"127.0.0.1:{silent.getsockname()[1]}") as c,
            pytest.raises(DeadlineExceeded) as caught,
        ):
            c.identify(email="ann@example.com", timeout=0.3)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and not caught.value.retryable


def test_auth_token_is_sent_as_bearer_metadata(make_sidecar, control):
    sidecar = make_sidecar(authToken="s3cret-caller-token")
    with TrengoSidecarClient(sidecar.address) as anonymous, pytest.raises(Unauthenticated) as caught:
        anonymous.identify(email="ann@example.com")
    assert caught.value.reason == "CALLER_UNAUTHENTICATED" and control.requests() == []
    with TrengoSidecarClient(sidecar.address, auth_token="wrong") as wrong, pytest.raises(Unauthenticated):
        wrong.identify(email="ann@example.com")
    with TrengoSidecarClient(sidecar.address, auth_token="s3cret-caller-token") as c:
        assert c.identify(email="ann@example.com").action is Action.CREATE_CONTACT


@pytest.mark.parametrize(
    ("code", "reason", "delay", "retryable"),
    [
        (grpc.StatusCode.UNAVAILABLE, "TRENGO_UNAVAILABLE", None, True),
        (grpc.StatusCode.UNAVAILABLE, "TRENGO_OUTCOME_UNKNOWN", None, False),
        (grpc.StatusCode.UNAVAILABLE, "TRENGO_OUTCOME_UNKNOWN", 1.0, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 1.0, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", None, False),
        (grpc.StatusCode.FAILED_PRECONDITION, "DUPLICATE_CONTACTS", None, False),
    ],
)
def test_retryable(code, reason, delay, retryable):
    assert SidecarError(code, reason, "m", retry_delay=delay).retryable is retryable


def test_async_client_does_the_same(sidecar, control):
    async def scenario() -> None:
        async with AsyncTrengoSidecarClient(sidecar.address, timeout=10) as c:
            created = await c.identify(email="ann@example.com", name="Ann", user_id="u1")
            assert created.action is Action.CREATE_CONTACT and created.request_id
            ticket = await c.track("Added to cart", email="ann@example.com", properties={"revenue": 5})
            assert ticket.action is Action.CREATE_TICKET and ticket.contact_cache_hit
            sent = await c.send_event(
                {"type": "track", "event": "Checked Out", "context": {"traits": {"email": "ann@example.com"}}}
            )
            assert sent.contact_id == created.contact_id
            dry = await c.identify(email="new@example.com", dry_run=True)
            assert dry.dry_run and dry.requests[-1].attempts == 0
            with pytest.raises(InvalidArgument) as invalid:
                await c.track("", email="ann@example.com")
            assert invalid.value.field == "event" and invalid.value.request_id
            with pytest.raises(FailedPrecondition) as unmapped:
                await c.track("Page Viewed", email="ann@example.com")
            assert unmapped.value.reason == "EVENT_NOT_MAPPED"
            with pytest.raises(NotFound) as missing:
                await c.track("Checked Out", email="nobody@example.com")
            assert missing.value.reason == "CONTACT_NOT_FOUND"

    asyncio.run(scenario())
    [contact] = control.contacts()
    assert contact["name"] == "Ann"
    subjects = sorted(t["subject"] for t in control.tickets())
    assert subjects == ["Cart was checked out", "Product was of value:5"]
    assert not control.requests(path_prefix="/api/v2/contacts", method="POST")  # creates go to /channels

"""Delivery details: shared work and deadlines, what the idempotency memory keeps, what gets cached."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from sidecar.deadline import Deadline
from sidecar.plan import events
from sidecar.plan.plan import plan_event
from tests.support.grpc_helpers import failure
from tests.support.harness import EMAIL_CHANNEL, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb

SEARCH = "/api/v2/contacts"
CREATE = f"/api/v2/channels/{EMAIL_CHANNEL}/contacts"


def identify(**traits: Any) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(traits=struct({"email": "ann@example.com", **traits}))


def test_a_caller_sharing_a_run_is_answered_by_its_own_deadline(stub, control):
    control.add_fault(method="POST", path=CREATE, delay=1.5)  # under the 2 s per-attempt timeout
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(stub.Identify, identify(name="Ann"), timeout=10)
        time.sleep(0.3)  # the first call's create is in flight
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Identify(identify(name="Ann"), timeout=0.6)
        waited = time.monotonic() - started
        assert slow.result().action == pb.ACTION_CREATE_CONTACT
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.retry_delay == 1.0, f
    assert waited < 1.0  # its own deadline, not the 1.5 s of the shared create
    assert len(control.requests(path_prefix=CREATE, method="POST")) == 1
    assert len(control.contacts()) == 1


def test_the_idempotency_memory_keeps_results_without_their_calls(sidecar, stub, control):
    stub.Identify(pb.IdentifyRequest(traits=struct({"email": "m@example.com"}), message_id="m-1"))
    stored = sidecar.call(sidecar.sidecar.delivery.idempotency.stored("m-1"))
    assert stored is not None and stored.calls == [] and stored.contact_id > 0


def test_a_trengo_contact_id_is_cached_only_once_trengo_confirms_it(stub, control):
    wrong = [pb.ExternalId(type="trengoContactId", id="424242")]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(
            pb.IdentifyRequest(traits=struct({"email": "ann@example.com", "name": "A"}), external_ids=wrong)
        )
    assert failure(caught.value).code == grpc.StatusCode.NOT_FOUND
    contact = control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    result = stub.Identify(identify(name="Ann Lee"))
    assert result.contact_id == contact["id"] and not result.contact_cache_hit
    # the wrong id was tried once (by the call that named it), never again from the cache
    assert len(control.requests(path_prefix="/api/v2/contacts/424242", method="PUT")) == 1


def test_a_ticket_422_about_another_field_is_not_taken_for_a_stale_contact(stub, control):
    contact = stub.Identify(identify(name="Ann"))
    body = {"message": "The given data was invalid.", "errors": {"subject": ["The subject is too long."]}}
    control.add_fault(method="POST", path="/api/v2/tickets", status=422, body=body)
    track = pb.TrackRequest(event="Checked Out", context=struct({"traits": {"email": "ann@example.com"}}))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(track)
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "TRENGO_REJECTED"
    assert "subject" in f.message
    # no search and no second POST: the cached contact was not doubted
    assert not control.requests(path_prefix=SEARCH, method="GET")
    assert len(control.requests(path_prefix="/api/v2/tickets", method="POST")) == 1
    assert stub.Track(track).contact_id == contact.contact_id  # still cached, still right


def test_a_dry_run_hands_back_the_plan_it_executed(sidecar, control):
    control.add_contact(name="D", identifier="d@example.com", channel_id=EMAIL_CHANNEL)
    traits = struct({"traits": {"email": "d@example.com"}})
    request = pb.TrackRequest(event="Product Purchased", context=traits, properties=struct({}), dry_run=True)
    event = events.from_track(request)
    delivery = sidecar.sidecar.delivery
    outcome = sidecar.call(delivery.deliver(event, Deadline.after(5)))
    assert outcome.dry_run and outcome.plan == plan_event(event, delivery.config, "email")
    assert outcome.plan.subject == "Product Purchased from our store"
    # what it would write is what the plan holds: the ticket's subject, on the planned channel
    [ticket] = [c for c in outcome.calls if c.url.endswith("/tickets")]
    body = json.loads(ticket.body_json)
    assert (body["subject"], body["channel_id"]) == (outcome.plan.subject, outcome.plan.channel_id)
    assert control.tickets() == []  # and nothing was written

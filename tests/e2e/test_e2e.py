"""End to end: the real sidecar on a real port, over gRPC, against the simulator over HTTP.

Every test asserts on what the simulator recorded, not only on the sidecar's answer.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.simulator.app import token_fingerprint
from tests.support.grpc_helpers import failure
from tests.support.harness import EMAIL_CHANNEL, SMS_CHANNEL, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb


def identify(email: str = "ann@example.com", **traits: Any) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(user_id="u1", traits=struct({"email": email, **traits}))


def track(event: str = "Product Purchased", email: str = "ann@example.com", **props: Any) -> pb.TrackRequest:
    return pb.TrackRequest(
        user_id="u1", event=event, properties=struct(props), context=struct({"traits": {"email": email}})
    )


def api_calls(control: Any) -> list[tuple[str, str]]:
    return [(r["method"], r["path"].removeprefix("/api/v2")) for r in control.requests()]


def test_identify_new_person_on_an_email_channel_creates_without_a_search(stub, control):
    result = stub.Identify(identify(firstName="Ann", lastName="Lee"))
    assert result.action == pb.ACTION_CREATE_CONTACT
    assert result.channel_id == EMAIL_CHANNEL and result.contact_id > 2**31
    assert api_calls(control) == [
        ("GET", "/channels"),
        ("POST", f"/channels/{EMAIL_CHANNEL}/contacts"),
    ]
    create = control.requests(method="POST")[0]
    assert create["body"] == {"name": "Ann Lee", "identifier": "ann@example.com", "channel_id": EMAIL_CHANNEL}
    assert create["headers"]["Authorization"] == "Bearer ****"  # the simulator masks what it records
    assert create["token"] == token_fingerprint("Bearer test-token")
    [contact] = control.contacts()
    assert contact["id"] == result.contact_id and contact["name"] == "Ann Lee"
    assert [r.method for r in result.requests] == ["GET", "POST"]
    assert result.requests[1].status_code == 201 and result.requests[1].attempts == 1
    assert json.loads(result.requests[1].body_json)["identifier"] == "ann@example.com"


def test_second_identify_is_one_call_from_the_cache(stub, control):
    first = stub.Identify(identify(name="Ann"))
    before = len(control.requests())
    second = stub.Identify(identify(name="Ann Lee"))
    assert second.action == pb.ACTION_UPDATE_CONTACT and second.contact_cache_hit
    assert second.contact_id == first.contact_id
    assert api_calls(control)[before:] == [("PUT", f"/contacts/{first.contact_id}")]
    assert control.contacts()[0]["name"] == "Ann Lee"


def test_identify_existing_contact_updates_its_name(stub, control):
    existing = control.add_contact(name="Old", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    result = stub.Identify(identify(name="New Name"))
    assert result.action == pb.ACTION_UPDATE_CONTACT and result.contact_id == existing["id"]
    assert api_calls(control)[-1] == ("PUT", f"/contacts/{existing['id']}")
    assert control.requests(method="PUT")[0]["body"] == {"name": "New Name"}


def test_identify_without_a_name_never_sends_undefined(stub, control):
    result = stub.Identify(identify())
    body = control.requests(method="POST")[0]["body"]
    assert "name" not in body and "undefined" not in json.dumps(body)
    again = stub.Identify(identify())
    assert again.action == pb.ACTION_NONE and again.contact_id == result.contact_id
    assert not control.requests(method="PUT")


def test_track_after_identify_costs_one_call_and_renders_the_subject(stub, control):
    contact = stub.Identify(identify(name="Ann"))
    before = len(control.requests())
    result = stub.Track(track("Added to cart", revenue=2000))
    assert result.action == pb.ACTION_CREATE_TICKET and result.contact_cache_hit
    assert api_calls(control)[before:] == [("POST", "/tickets")]
    ticket = control.requests(method="POST", path_prefix="/api/v2/tickets")[0]["body"]
    assert ticket == {
        "contact_id": contact.contact_id,
        "channel_id": EMAIL_CHANNEL,
        "subject": "Product was of value:2000",
    }
    [stored] = control.tickets()
    assert stored["id"] == result.ticket_id


@pytest.mark.parametrize(
    ("event", "props", "subject"),
    [
        ("Product Purchased", {}, "Product Purchased from our store"),
        ("Added to cart", {"revenue": 2000}, "Product was of value:2000"),
        ("Checked Out", {}, "Cart was checked out"),
        ("No Subject", {}, None),
    ],
)
def test_track_subjects_of_the_reference_table(stub, control, event, props, subject):
    control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    stub.Track(track(event, **props))
    body = control.requests(path_prefix="/api/v2/tickets")[0]["body"]
    assert body.get("subject") == subject


def test_track_for_an_unknown_event_is_refused_before_any_call(stub, control):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(track("Page Viewed"))
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "EVENT_NOT_MAPPED"
    assert "Page Viewed" in f.message
    assert control.requests() == []


def test_track_for_someone_without_a_contact_is_not_found(stub, control):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(track(email="nobody@example.com"))
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.NOT_FOUND and f.reason == "CONTACT_NOT_FOUND"
    assert control.tickets() == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.IdentifyRequest(traits=struct({"name": "No identifier"})), "traits.email"),
        (pb.IdentifyRequest(traits=struct({"email": 42})), "traits.email"),
        (pb.IdentifyRequest(traits=struct({"email": "not an email"})), "traits.email"),
        (
            pb.IdentifyRequest(traits=struct({"email": "a@b.io"}), context=struct({"traits": "x"})),
            "context.traits",
        ),
    ],
)
def test_malformed_identify_is_invalid_argument_and_trengo_is_not_called(stub, control, request_, field):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(request_)
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT and f.field == field
    assert control.requests() == []


def test_track_without_event_name_is_invalid_argument(stub, control):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(pb.TrackRequest(context=struct({"traits": {"email": "a@b.io"}})))
    assert failure(caught.value).field == "event"
    assert control.requests() == []


def test_send_event_takes_rudderstack_json_unchanged(stub, control):
    identify_event = {
        "type": "identify",
        "userId": "u1",
        "messageId": "m-1",
        "context": {
            "traits": {"email": "bob@example.com", "firstName": "Bob"},
            "externalId": [{"type": "other", "id": "x"}],
        },
        "traits": {"lastName": "Stone"},
    }
    created = stub.SendEvent(pb.SendEventRequest(event=struct(identify_event)))
    assert created.action == pb.ACTION_CREATE_CONTACT and created.message_id == "m-1"
    assert control.requests(method="POST")[0]["body"]["name"] == "Bob Stone"
    track_event = {"type": "track", "event": "Product Purchased", "properties": {"email": "bob@example.com"}}
    ticket = stub.SendEvent(pb.SendEventRequest(event=struct(track_event)))
    assert ticket.action == pb.ACTION_CREATE_TICKET and ticket.contact_id == created.contact_id
    [stored] = control.tickets()
    assert stored["id"] == ticket.ticket_id and stored["contact_id"] == created.contact_id
    assert stored["subject"] == "Product Purchased from our store"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({}, "event.type"),
        ({"type": "page"}, "event.type"),
        ({"type": 3}, "event.type"),
        ({"type": "track", "properties": {"email": "a@b.io"}}, "event.event"),
        ({"type": "identify", "traits": []}, "event.traits"),
        (
            {
                "type": "identify",
                "traits": {"email": "a@b.io"},
                "context": {"externalId": [{"type": "trengoContactId", "id": "abc"}]},
            },
            "event.context.externalId[0].id",
        ),
    ],
)
def test_send_event_rejects_malformed_events_naming_the_field(stub, control, event, field):
    with pytest.raises(grpc.RpcError) as caught:
        stub.SendEvent(pb.SendEventRequest(event=struct(event)))
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT and f.field == field, f
    assert control.requests() == []


def test_phone_channel_override_sends_the_plus_url_encoded(stub, control):
    request = pb.IdentifyRequest(
        traits=struct({"phone": "+31 6 1234 5678", "name": "Piet"}),
        external_ids=[pb.ExternalId(type="trengoChannelId", id=str(SMS_CHANNEL))],
    )
    result = stub.Identify(request)
    assert result.channel_id == SMS_CHANNEL and result.action == pb.ACTION_CREATE_CONTACT
    search = control.requests(path_prefix="/api/v2/contacts")[0]
    assert search["params"]["term"] == "+31 6 1234 5678"
    assert "%2B31" in search["query"]
    assert control.requests(method="POST")[0]["path"] == f"/api/v2/channels/{SMS_CHANNEL}/contacts"


def test_several_matching_contacts_are_duplicate_contacts(stub, control):
    # Phone channels duplicate numbers (an e-mail create would just hand back one of them).
    for _ in range(2):
        control.add_contact(name="Piet", identifier="+31612345678", channel_id=SMS_CHANNEL)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(
            pb.IdentifyRequest(
                traits=struct({"phone": "+31612345678", "name": "Piet"}),
                external_ids=[pb.ExternalId(type="trengoChannelId", id=str(SMS_CHANNEL))],
            )
        )
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "DUPLICATE_CONTACTS"
    assert not control.requests(method="PUT") and not control.requests(method="POST")


def test_fuzzy_search_hits_are_not_taken_for_the_person(stub, control):
    control.add_contact(name="Jo", identifier="joann@example.com", channel_id=EMAIL_CHANNEL)
    result = stub.Identify(identify("ann@example.com", name="Ann"))
    assert result.action == pb.ACTION_CREATE_CONTACT
    assert len(control.contacts()) == 2


def test_trengo_contact_id_skips_the_search(stub, control):
    contact = control.add_contact(name="Old", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    ext = [pb.ExternalId(type="trengoContactId", id=str(contact["id"]))]
    request = pb.IdentifyRequest(traits=struct({"name": "New"}), external_ids=ext)
    result = stub.Identify(request)
    assert result.action == pb.ACTION_UPDATE_CONTACT and result.contact_id == contact["id"]
    assert api_calls(control) == [("GET", "/channels"), ("PUT", f"/contacts/{contact['id']}")]
    ticket = stub.Track(pb.TrackRequest(event="Checked Out", external_ids=ext))
    assert ticket.contact_id == contact["id"]
    [stored] = control.tickets()
    assert stored["id"] == ticket.ticket_id and stored["contact_id"] == contact["id"]
    assert not control.requests(path_prefix="/api/v2/contacts", method="GET")


def test_dedup_off_always_creates(make_sidecar, control):
    sidecar = make_sidecar(enableDedup=False, channelIdentifier="phone", channelId=SMS_CHANNEL)
    channel, stub = sidecar.stub()
    for _ in range(2):
        stub.Identify(pb.IdentifyRequest(traits=struct({"phone": "+3161234567"})))
    channel.close()
    assert not control.requests(path_prefix="/api/v2/contacts", method="GET")
    assert len(control.contacts()) == 2  # a phone channel duplicates, as the reference does


def test_dry_run_reads_but_does_not_write(stub, control):
    result = stub.Identify(
        pb.IdentifyRequest(traits=struct({"email": "d@example.com", "name": "D"}), dry_run=True)
    )
    assert result.dry_run and result.action == pb.ACTION_CREATE_CONTACT and result.contact_id == 0
    would = result.requests[-1]
    assert would.method == "POST" and would.attempts == 0 and would.status_code == 0
    assert would.headers["Authorization"] == "Bearer ****"
    assert "test-token" not in str(result)
    assert not control.requests(method="POST") and control.contacts() == []


def test_wrong_token_is_failed_precondition_without_leaking_it(make_sidecar, control):
    sidecar = make_sidecar(apiToken="wrong-secret-token")
    channel, stub = sidecar.stub()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(identify())
    channel.close()
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "TRENGO_UNAUTHORIZED"
    assert "wrong-secret-token" not in f.message
    assert [r["status"] for r in control.requests()] == [401]


def test_channel_kind_contradicting_the_identifier_fails_clearly(make_sidecar, control):
    sidecar = make_sidecar(channelIdentifier="phone")  # the channel is an EMAIL channel
    channel, stub = sidecar.stub()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(pb.IdentifyRequest(traits=struct({"phone": "+3161234567"})))
    channel.close()
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "CHANNEL_KIND_MISMATCH"
    assert not control.requests(method="POST")


def test_auto_learns_a_phone_channel_and_asks_for_a_phone(stub, control):
    ext = [pb.ExternalId(type="trengoChannelId", id=str(SMS_CHANNEL))]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(pb.IdentifyRequest(traits=struct({"email": "a@b.io"}), external_ids=ext))
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT and f.reason == "MISSING_IDENTIFIER"
    assert api_calls(control) == [("GET", "/channels")]


def test_channels_are_listed_once_across_events(stub, control):
    for i in range(5):
        stub.Identify(identify(f"p{i}@example.com"))
    assert len(control.requests(path_prefix="/api/v2/channels", method="GET")) == 1


def test_concurrent_identifies_for_a_new_phone_make_one_contact(make_sidecar, control):
    sidecar = make_sidecar(channelId=SMS_CHANNEL)
    channel, stub = sidecar.stub()
    request = pb.IdentifyRequest(traits=struct({"phone": "+31612345678", "name": "Same"}))
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: stub.Identify(request), range(12)))
    channel.close()
    assert len({r.contact_id for r in results}) == 1
    assert len(control.contacts()) == 1
    assert len(control.requests(path_prefix="/api/v2/contacts", method="GET")) == 1
    assert len(control.requests(method="POST")) == 1


def test_health_and_reflection(sidecar):
    with grpc.insecure_channel(sidecar.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "trengo.sidecar.v1.TrengoSidecar"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [answer] = list(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
        names = {s.name for s in answer.list_services_response.service}
        assert "trengo.sidecar.v1.TrengoSidecar" in names and "grpc.health.v1.Health" in names

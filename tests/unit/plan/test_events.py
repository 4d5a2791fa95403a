"""Input validation and the identifier/name rules, on the one Event type."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.errors import InvalidArgument
from sidecar.plan.events import Event, from_identify, from_send_event, from_track
from tests.support.harness import struct
from trengo.sidecar.v1 import sidecar_pb2 as pb


def send(event: dict[str, Any]) -> Event:
    return from_send_event(pb.SendEventRequest(event=struct(event)))


def invalid(fn: Any, *args: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        fn(*args)
    return caught.value


def test_identifier_comes_from_traits_then_context_traits_then_properties():
    assert (
        send(
            {"type": "identify", "traits": {"email": "a@x.io"}, "context": {"traits": {"email": "b@x.io"}}}
        ).email
        == "a@x.io"
    )
    assert send({"type": "identify", "context": {"traits": {"email": "b@x.io"}}}).email == "b@x.io"
    assert (
        send({"type": "track", "event": "E", "properties": {"phone": "+31 6 1234 5678"}}).phone
        == "+31 6 1234 5678"
    )


def test_empty_identifier_is_skipped_for_the_next_source():
    event = send({"type": "identify", "traits": {"email": ""}, "context": {"traits": {"email": "b@x.io"}}})
    assert event.email == "b@x.io"


@pytest.mark.parametrize(
    ("traits", "name"),
    [
        ({"name": "Ann Lee"}, "Ann Lee"),
        ({"firstName": "Ann", "lastName": "Lee"}, "Ann Lee"),
        ({"firstname": "Ann", "last_name": "Lee"}, "Ann Lee"),
        ({"first_name": "Ann"}, "Ann"),
        ({"lastName": "Lee"}, "Lee"),
        ({"name": "  Ann \n  Lee "}, "Ann Lee"),
        ({}, None),
        ({"name": ""}, None),
    ],
)
def test_name_rules_never_produce_undefined(traits, name):
    event = from_identify(pb.IdentifyRequest(traits=struct({"email": "a@x.io", **traits})))
    assert event.name == name


def test_numbers_become_ints_when_whole():
    event = from_track(pb.TrackRequest(event="E", properties=struct({"revenue": 2000, "ratio": 0.5})))
    assert event.properties == {"revenue": 2000, "ratio": 0.5}
    assert isinstance(event.properties["revenue"], int)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({}, "event.type"),
        ({"type": ""}, "event.type"),
        ({"type": "alias"}, "event.type"),
        ({"type": ["track"]}, "event.type"),
        ({"type": "track"}, "event.event"),
        ({"type": "track", "event": 5}, "event.event"),
        ({"type": "track", "event": "E", "properties": "x"}, "event.properties"),
        ({"type": "identify", "context": []}, "event.context"),
        ({"type": "identify", "context": {"traits": 1}}, "event.context.traits"),
        ({"type": "identify", "context": {"externalId": {}}}, "event.context.externalId"),
        ({"type": "identify", "context": {"externalId": ["x"]}}, "event.context.externalId[0]"),
        ({"type": "identify", "traits": {"email": True}}, "event.traits.email"),
        ({"type": "identify", "traits": {"phone": 31612345678}}, "event.traits.phone"),
        ({"type": "identify", "traits": {"phone": "call me"}}, "event.traits.phone"),
        ({"type": "identify", "traits": {"email": "a\x00@x.io"}}, "event.traits.email"),
        ({"type": "identify", "traits": {"email": "a@x.io", "name": "A\x9bB"}}, "event.traits.name"),
        ({"type": "identify", "traits": {"name": {"first": "A"}}}, "event.traits.name"),
        ({"type": "identify", "traits": {"name": "x" * 300}}, "event.traits.name"),
        ({"type": "identify", "userId": {"id": 1}}, "event.userId"),
        ({"type": "identify", "messageId": "m" * 300}, "event.messageId"),
    ],
)
def test_send_event_validation_names_the_field(event, field):
    assert invalid(send, event).field == field


def test_type_is_case_insensitive_like_the_reference():
    assert send({"type": "Identify", "traits": {"email": "a@x.io"}}).kind == "identify"


def test_nan_and_infinity_are_refused():
    request = pb.TrackRequest(event="E")
    request.properties.fields["x"].number_value = float("nan")
    assert invalid(from_track, request).field == "properties.x"
    request.properties.fields["x"].number_value = float("inf")
    assert invalid(from_track, request).field == "properties.x"


def test_deep_nesting_is_refused():
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(28):
        inner["a"] = {}
        inner = inner["a"]
    error = invalid(from_track, pb.TrackRequest(event="E", properties=struct(deep)))
    assert error.field is not None and error.field.startswith("properties.a.a")


@pytest.mark.parametrize(
    ("ids", "channel", "contact"),
    [
        ([("trengoChannelId", "405981")], 405981, None),
        ([("trengoContactId", "90002431001")], None, 90002431001),
        ([("otherDest", "x"), ("trengoContactId", "7")], None, 7),
        ([("trengoContactId", "7"), ("trengoContactId", "7")], None, 7),
    ],
)
def test_external_ids(ids, channel, contact):
    request = pb.IdentifyRequest(external_ids=[pb.ExternalId(type=t, id=i) for t, i in ids])
    event = from_identify(request)
    assert (event.channel_id, event.contact_id) == (channel, contact)


@pytest.mark.parametrize("bad", ["", "abc", "-1", "0", "1.5", str(2**63), "٣"])
def test_external_id_must_be_a_positive_integer(bad):
    request = pb.IdentifyRequest(external_ids=[pb.ExternalId(type="trengoChannelId", id=bad)])
    assert invalid(from_identify, request).field == "external_ids[0].id"


def test_conflicting_external_ids_are_refused():
    request = pb.IdentifyRequest(
        external_ids=[
            pb.ExternalId(type="trengoContactId", id="1"),
            pb.ExternalId(type="trengoContactId", id="2"),
        ]
    )
    assert invalid(from_identify, request).field == "external_ids[1].id"


def test_context_external_ids_on_typed_requests_count_too():
    request = pb.TrackRequest(
        event="E", context=struct({"externalId": [{"type": "trengoContactId", "id": 9}]})
    )
    assert from_track(request).contact_id == 9

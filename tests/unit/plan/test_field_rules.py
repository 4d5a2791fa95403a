"""Issue 9's last field rules: the e-mail fallback to an external id, and malformed trengo* ids."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.errors import InvalidArgument
from sidecar.plan.events import Event, from_identify, from_send_event, from_track
from tests.support.harness import struct
from trengo.sidecar.v1 import sidecar_pb2 as pb


def send(event: dict[str, Any]) -> Event:
    return from_send_event(pb.SendEventRequest(event=struct(event)))


def identify_with(*external_ids: dict[str, Any], **traits: Any) -> Event:
    return send({"type": "identify", "traits": traits, "context": {"externalId": list(external_ids)}})


def test_without_an_email_the_first_external_id_that_is_one_is_taken():
    event = identify_with(
        {"type": "trengoChannelId", "id": "405981"},
        {"type": "hubspotId", "id": "12345"},  # not an e-mail: skipped
        {"type": "brazeExternalId", "id": " ann@example.com "},
        {"type": "otherEmail", "id": "bob@example.com"},
    )
    assert event.email == "ann@example.com" and event.channel_id == 405981


def test_trengo_ids_are_never_taken_for_the_email():
    # RudderStack would take context.externalId[0].id whatever its type: here, nothing qualifies
    event = identify_with({"type": "trengoContactId", "id": "7"}, {"type": "trengoSomething", "id": "a@b.io"})
    assert event.email is None and event.contact_id == 7


def test_an_email_in_traits_context_traits_or_properties_comes_first():
    ids = [{"type": "crm", "id": "ext@example.com"}]
    assert identify_with(*ids, email="ann@example.com").email == "ann@example.com"
    event = send({"type": "identify", "context": {"traits": {"email": "ctx@example.com"}, "externalId": ids}})
    assert event.email == "ctx@example.com"
    event = send({"type": "track", "event": "E", "properties": {"email": "p@example.com"},
                  "context": {"externalId": ids}})
    assert event.email == "p@example.com"


def test_a_blank_email_in_traits_falls_back_to_the_external_id():
    assert identify_with({"type": "crm", "id": "ext@example.com"}, email="  ").email == "ext@example.com"


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "crm", "id": 12345},
        {"type": "crm", "id": None},
        {"type": "crm"},
        {"type": "crm", "id": "not an e-mail"},
        {"type": "crm", "id": "a@b@c"},
        {"type": "crm", "id": "ann\x00@example.com"},
        {"type": "crm", "id": "a" * 250 + "@x.io"},  # longer than any e-mail address
    ],
)
def test_an_external_id_that_is_no_email_is_not_taken_and_is_no_error(entry):
    assert identify_with(entry).email is None


def test_an_external_id_without_a_string_type_still_counts():
    assert identify_with({"id": "ann@example.com"}).email == "ann@example.com"
    assert identify_with({"type": 5, "id": "ann@example.com"}).email == "ann@example.com"


def test_typed_requests_fall_back_to_their_external_ids_too():
    request = pb.TrackRequest(event="E", external_ids=[pb.ExternalId(type="crmEmail", id="ann@example.com")])
    assert from_track(request).email == "ann@example.com"
    request2 = pb.IdentifyRequest(context=struct({"externalId": [{"type": "crm", "id": "bob@example.com"}]}))
    assert from_identify(request2).email == "bob@example.com"


def test_the_phone_has_no_such_fallback():
    assert identify_with({"type": "crm", "id": "+31 6 1234 5678"}).phone is None


# --- malformed trengo* external ids: refused (RudderStack silently ignores them) ---------------


@pytest.mark.parametrize("kind", ["trengoChannelId", "trengoContactId"])
@pytest.mark.parametrize("entry", [{}, {"id": None}, {"id": ""}, {"id": "abc"}, {"id": True}, {"id": {}}])
def test_a_trengo_external_id_without_a_usable_id_is_invalid_naming_the_field(kind, entry):
    with pytest.raises(InvalidArgument) as caught:
        identify_with({"type": kind, **entry}, email="ann@example.com")
    assert caught.value.field == "event.context.externalId[0].id"
    assert caught.value.reason == "INVALID_EVENT"

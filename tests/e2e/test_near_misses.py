"""Near misses are refused with what was probably meant (issue 10, item 14), and nothing is sent.

An externalId type in the wrong case used to be ignored as another destination's id, so the event
went to the default channel or searched for a contact it had been told the id of.
"""

from __future__ import annotations

import grpc
import pytest

from tests.support.grpc_helpers import failure
from tests.support.harness import struct
from trengo.sidecar.v1 import sidecar_pb2 as pb


def track(event: str = "Checked Out", **extra) -> pb.TrackRequest:
    return pb.TrackRequest(event=event, context=struct({"traits": {"email": "ann@example.com"}}), **extra)


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("trengoChannelID", "trengoChannelId"),
        ("TrengoContactId", "trengoContactId"),
        ("trengochannelid ", "trengoChannelId"),
    ],
)
def test_an_external_id_type_in_the_wrong_case_is_refused_with_the_right_one(
    stub, control, ann, given, meant
):
    request = track(external_ids=[pb.ExternalId(type=given, id="405981")])
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(request, timeout=5)
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT and f.reason == "INVALID_EVENT", f
    assert f.field == "external_ids[0].type" and f"did you mean {meant}?" in f.message, f
    assert control.requests() == [] and control.tickets() == []


def test_the_same_in_a_rudderstack_event(stub, control, ann):
    event = {
        "type": "track",
        "event": "Checked Out",
        "context": {
            "traits": {"email": "ann@example.com"},
            "externalId": [{"type": "trengoChannelID", "id": "405981"}],
        },
    }
    with pytest.raises(grpc.RpcError) as caught:
        stub.SendEvent(pb.SendEventRequest(event=struct(event)), timeout=5)
    f = failure(caught.value)
    assert f.field == "event.context.externalId[0].type" and "did you mean trengoChannelId?" in f.message, f
    assert control.requests() == []


def test_another_destinations_id_is_still_ignored(stub, control, ann):
    request = track(external_ids=[pb.ExternalId(type="hubspotContactId", id="7")])
    assert stub.Track(request, timeout=5).ticket_id > 0
    assert len(control.tickets()) == 1


@pytest.mark.parametrize("name", ["added to cart", "ADDED TO CART", " Added  to cart"])
def test_an_event_name_in_the_wrong_case_says_which_key_was_meant(stub, control, ann, name):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(track(name), timeout=5)
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "EVENT_NOT_MAPPED", f
    assert "did you mean 'Added to cart'?" in f.message, f
    assert control.requests() == []


def test_an_event_far_from_every_key_keeps_the_plain_message(stub, control, ann):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(track("Page Viewed"), timeout=5)
    f = failure(caught.value)
    assert f.reason == "EVENT_NOT_MAPPED" and "did you mean" not in f.message, f
    assert "add it to deliver it to Trengo" in f.message

"""The Deliver stream: one response per event, in order per person, errors answered in-stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from sidecar.api.stream import OrderedByKey
from tests.support.harness import struct
from trengo.sidecar.v1 import sidecar_pb2 as pb


def identify(id_: str, user: str) -> pb.DeliverRequest:
    return pb.DeliverRequest(
        id=id_,
        identify=pb.IdentifyRequest(
            user_id=user, traits=struct({"email": f"{user}@example.com", "name": user})
        ),
    )


def track(id_: str, user: str, event: str = "Checked Out") -> pb.DeliverRequest:
    return pb.DeliverRequest(
        id=id_,
        track=pb.TrackRequest(
            user_id=user, event=event, context=struct({"traits": {"email": f"{user}@example.com"}})
        ),
    )


def test_identify_then_track_per_person_in_order_over_one_stream(stub, control):
    requests = []
    for i in range(20):
        requests += [identify(f"i{i}", f"u{i}"), track(f"t{i}", f"u{i}")]
    answers = {a.id: a for a in stub.Deliver(iter(requests))}
    assert set(answers) == {r.id for r in requests}
    for i in range(20):
        created, ticket = answers[f"i{i}"], answers[f"t{i}"]
        assert created.result.action == pb.ACTION_CREATE_CONTACT
        # the track waited for its person's identify: no NOT_FOUND, the same contact
        assert ticket.WhichOneof("outcome") == "result", ticket.error
        assert ticket.result.contact_id == created.result.contact_id
    assert len(control.contacts()) == 20 and len(control.tickets()) == 20


def test_bad_events_are_answered_in_stream_and_the_stream_goes_on(stub, control):
    requests = [
        pb.DeliverRequest(id="empty"),
        pb.DeliverRequest(id="bad", send_event=pb.SendEventRequest(event=struct({"type": "page"}))),
        identify("ok", "ann"),
        track("unmapped", "ann", event="Nope"),
    ]
    answers = {a.id: a for a in stub.Deliver(iter(requests))}
    assert answers["empty"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers["empty"].error.field == "event"
    assert answers["bad"].error.field == "event.type"
    assert answers["ok"].result.action == pb.ACTION_CREATE_CONTACT
    assert answers["unmapped"].error.reason == "EVENT_NOT_MAPPED"
    assert len(control.requests(method="POST")) == 1


def test_an_id_too_long_for_int_is_answered_in_stream_and_the_next_event_still_is(stub, control):
    huge = pb.ExternalId(type="trengoContactId", id="9" * 5000)
    requests = [
        pb.DeliverRequest(id="huge", identify=pb.IdentifyRequest(external_ids=[huge])),
        identify("next", "bob"),
    ]
    answers = {a.id: a for a in stub.Deliver(iter(requests))}
    assert answers["huge"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers["huge"].error.field == "external_ids[0].id"
    assert answers["next"].result.action == pb.ACTION_CREATE_CONTACT


def test_a_sender_that_does_not_read_its_answers_stops_being_read():
    pulled = 0

    async def requests() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i

    async def answer(i: int) -> int:
        return i

    async def prepare(i: int) -> tuple[str, Any]:
        return str(i), lambda: answer(i)

    async def main() -> None:
        answers = OrderedByKey(prepare, max_in_flight=8).run(requests())
        assert await anext(answers) is not None
        await asyncio.sleep(0.1)  # ample time to read all 1,000 if nothing held the reader back
        assert pulled <= 8 + 2, pulled
        await answers.aclose()

    asyncio.run(main())

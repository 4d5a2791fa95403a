"""End to end: a ticket's internal note and labels, a contact's custom fields from traits.

The real sidecar over gRPC against the simulator over HTTP; every test asserts on what the
simulator stored and recorded, not only on the sidecar's answer.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from trengo_sidecar_client import FollowUpFailure, TrengoSidecarClient

from sidecar.observe.metrics import start_metrics
from tests.support.grpc_helpers import failure
from tests.support.grpcurl import ok
from tests.support.harness import EMAIL_CHANNEL, TEMPLATES, struct
from tests.support.logs import handled
from tests.support.metrics import scrape, value
from tests.support.queue_helpers import FAST_QUEUE, settled
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

FIRST_TICKET = 7000000001  # the simulator's first ticket id after a reset
ORDER = {
    "from": "Order Placed",
    "to": "Order {{ order_id }}",
    "note": "Order {{ order_id }} of {{ amount }}: {{ url }} ({{ product }})",
    "labels": ["VIP", "Orders"],
}
FIELDS = [{"from": "plan", "to": "Plan"}, {"from": "address.city", "to": "City"}]


def order(email: str = "ann@example.com", message_id: str = "", **props: Any) -> pb.TrackRequest:
    properties = {"order_id": "A-17", "amount": 2000, "url": "https://shop.example/o/A-17", **props}
    return pb.TrackRequest(
        event="Order Placed",
        properties=struct(properties),
        context=struct({"traits": {"email": email}}),
        message_id=message_id,
    )


def identify(**traits: Any) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(traits=struct({"email": "ann@example.com", **traits}))


def api_calls(control: Any, since: int = 0) -> list[tuple[str, str]]:
    return [(r["method"], r["path"].removeprefix("/api/v2")) for r in control.requests()[since:]]


@pytest.fixture
def labels(control):
    """VIP and Orders, plus a label the config does not use."""
    return {name: control.add_label(name)["id"] for name in ("Refunds", "VIP", "Orders")}


@pytest.fixture
def shop(make_sidecar, labels):
    sidecar = make_sidecar(eventTemplateMap=[*TEMPLATES, ORDER], maxAttempts=3)
    channel = grpc.insecure_channel(sidecar.address)
    yield sidecar, pb_stub(channel)
    channel.close()


def pb_stub(channel: grpc.Channel) -> pb_grpc.TrengoSidecarStub:
    return pb_grpc.TrengoSidecarStub(channel)


def test_ticket_gets_the_note_then_the_labels(shop, control, ann, labels):
    _, stub = shop
    result = stub.Track(order(product="<b>Mug</b>"))
    assert result.action == pb.ACTION_CREATE_TICKET and not result.failed_followups
    ticket_id = result.ticket_id
    assert api_calls(control) == [
        ("GET", "/channels"),
        ("GET", "/labels"),
        ("GET", "/contacts"),
        ("POST", "/tickets"),
        ("POST", f"/tickets/{ticket_id}/messages"),
        ("POST", f"/tickets/{ticket_id}/labels"),
        ("POST", f"/tickets/{ticket_id}/labels"),
    ]
    [ticket] = control.tickets()
    assert ticket["id"] == ticket_id and ticket["subject"] == "Order A-17"
    [note] = ticket["messages"]
    # {{ }} escapes as Handlebars does: the customer's "<b>" reaches the agent as text, not markup
    assert note["type"] == "NOTE"
    assert note["message"] == "Order A-17 of 2000: https://shop.example/o/A-17 (&lt;b&gt;Mug&lt;/b&gt;)"
    assert [label["name"] for label in ticket["labels"]] == ["VIP", "Orders"]
    bodies = [r["body"] for r in control.requests(method="POST")[1:]]
    assert bodies[0]["internal_note"] is True
    assert bodies[1:] == [{"label_id": labels["VIP"]}, {"label_id": labels["Orders"]}]
    assert [r.url.removeprefix(control.root + "/api/v2") for r in result.requests][-3:] == [
        f"/tickets/{ticket_id}/messages",
        f"/tickets/{ticket_id}/labels",
        f"/tickets/{ticket_id}/labels",
    ]
    assert all(r.status_code in (200, 201) and r.attempts == 1 for r in result.requests)


def test_label_names_are_looked_up_once(shop, control, ann):
    _, stub = shop
    stub.Track(order())
    before = len(control.requests())
    second = stub.Track(order(order_id="A-18"))
    assert second.contact_cache_hit
    assert [m for m, _ in api_calls(control, before)] == ["POST", "POST", "POST", "POST"]
    assert len(control.requests(path_prefix="/api/v2/labels")) == 1


@pytest.mark.parametrize(
    ("names", "archived"),
    [
        (["VIP", "Vip customers"], False),  # a typo
        (["VIP", "Old campaign"], True),  # Trengo lists it (archived set), but it cannot be put on a ticket
    ],
)
def test_an_unknown_or_archived_label_is_refused_before_anything_is_written(
    make_sidecar, control, ann, labels, names, archived
):
    if archived:
        control.add_label("Old campaign", archived=True)
    sidecar = make_sidecar(eventTemplateMap=[{**ORDER, "labels": names}])
    channel = grpc.insecure_channel(sidecar.address)
    with pytest.raises(grpc.RpcError) as caught:
        pb_stub(channel).Track(order())
    channel.close()
    refused = failure(caught.value)
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION and refused.reason == "LABEL_NOT_FOUND"
    assert names[1] in refused.message
    assert api_calls(control) == [("GET", "/channels"), ("GET", "/labels")]
    assert control.tickets() == []


def test_label_ids_need_no_look_up(make_sidecar, control, ann, labels):
    sidecar = make_sidecar(eventTemplateMap=[{**ORDER, "note": "", "labels": [labels["Refunds"]]}])
    channel = grpc.insecure_channel(sidecar.address)
    result = pb_stub(channel).Track(order())
    channel.close()
    assert not control.requests(path_prefix="/api/v2/labels")
    [ticket] = control.tickets()
    assert [label["name"] for label in ticket["labels"]] == ["Refunds"] and ticket["messages"] == []
    assert not result.failed_followups


def test_a_follow_up_failing_with_500_is_retried(shop, control, ann):
    _, stub = shop
    control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/labels", status=500, count=1)
    result = stub.Track(order())
    assert result.ticket_id == FIRST_TICKET and not result.failed_followups
    label_calls = [r for r in result.requests if r.url.endswith("/labels") and r.method == "POST"]
    assert [r.attempts for r in label_calls] == [2, 1]
    statuses = [r["status"] for r in control.requests(path_prefix=f"/api/v2/tickets/{FIRST_TICKET}/labels")]
    assert statuses == [500, 200, 200]
    [ticket] = control.tickets()
    assert [label["name"] for label in ticket["labels"]] == ["VIP", "Orders"]


def test_a_follow_up_failing_for_good_is_reported_and_the_ticket_stands(shop, control, ann):
    _, stub = shop
    control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/messages", status=503, count=-1)
    result = stub.Track(order())
    assert result.action == pb.ACTION_CREATE_TICKET and result.ticket_id == FIRST_TICKET
    [failed] = result.failed_followups
    assert (failed.kind, failed.target, failed.reason) == ("note", "", "TRENGO_UNAVAILABLE")
    assert "503" in failed.message
    notes = control.requests(path_prefix=f"/api/v2/tickets/{FIRST_TICKET}/messages")
    assert [r["status"] for r in notes] == [503, 503, 503]  # maxAttempts: 3
    [ticket] = control.tickets()
    assert ticket["messages"] == [] and [label["name"] for label in ticket["labels"]] == ["VIP", "Orders"]


def test_an_unknown_label_id_is_trengos_422_reported(make_sidecar, control, ann, labels):
    sidecar = make_sidecar(eventTemplateMap=[{**ORDER, "labels": [99999, "VIP"]}])
    channel = grpc.insecure_channel(sidecar.address)
    result = pb_stub(channel).Track(order())
    channel.close()
    [failed] = result.failed_followups
    assert (failed.kind, failed.target, failed.reason) == ("label", "99999", "TRENGO_REJECTED")
    assert "label id" in failed.message
    [ticket] = control.tickets()
    assert [label["name"] for label in ticket["labels"]] == ["VIP"] and len(ticket["messages"]) == 1


def test_a_dry_run_lists_the_follow_ups_and_sends_none(shop, control, ann):
    _, stub = shop
    request = order()
    request.dry_run = True
    result = stub.Track(request)
    assert result.dry_run and not result.failed_followups
    writes = [(r.method, r.url.removeprefix(control.root + "/api/v2"), r.attempts) for r in result.requests]
    assert writes[-4:] == [
        ("POST", "/tickets", 0),
        ("POST", "/tickets/0/messages", 0),
        ("POST", "/tickets/0/labels", 0),
        ("POST", "/tickets/0/labels", 0),
    ]
    assert json.loads(result.requests[-3].body_json)["internal_note"] is True
    assert control.tickets() == [] and not control.requests(method="POST")


def test_an_idempotent_replay_does_not_redo_the_follow_ups(shop, control, ann):
    _, stub = shop
    first = stub.Track(order(message_id="m-order-1"))
    before = len(control.requests())
    again = stub.Track(order(message_id="m-order-1"))
    assert again.replayed and again.ticket_id == first.ticket_id and not again.requests
    assert len(control.requests()) == before
    [ticket] = control.tickets()
    assert len(ticket["messages"]) == 1 and len(ticket["labels"]) == 2


# --- custom fields ---------------------------------------------------------------


@pytest.fixture
def fields(control):
    """Contact fields Plan and City, and a ticket field also called Plan that must not be used."""
    control.add_custom_field("Plan", type="TICKET")
    return {title: control.add_custom_field(title)["id"] for title in ("Plan", "City", "Lifetime value")}


@pytest.fixture
def crm(make_sidecar, fields):
    mapping = [*FIELDS, {"from": "ltv", "to": fields["Lifetime value"]}]
    sidecar = make_sidecar(customFieldMap=mapping, maxAttempts=2)
    channel = grpc.insecure_channel(sidecar.address)
    yield pb_stub(channel)
    channel.close()


def test_an_identify_fills_custom_fields_from_traits(crm, control, fields):
    request = identify(name="Ann", plan="pro", ltv=2000)
    request.context.update({"traits": {"address": {"city": "Utrecht"}}})
    result = crm.Identify(request)
    assert result.action == pb.ACTION_CREATE_CONTACT and not result.failed_followups
    contact_id = result.contact_id
    assert api_calls(control) == [
        ("GET", "/channels"),
        ("GET", "/custom_fields"),
        ("POST", f"/channels/{EMAIL_CHANNEL}/contacts"),  # e-mail: created at once, no search
        ("POST", f"/contacts/{contact_id}/custom_fields"),
        ("POST", f"/contacts/{contact_id}/custom_fields"),
        ("POST", f"/contacts/{contact_id}/custom_fields"),
    ]
    [contact] = control.contacts()
    assert contact["custom_field_data"] == {
        str(fields["Plan"]): "pro",
        str(fields["City"]): "Utrecht",
        str(fields["Lifetime value"]): "2000",
    }
    assert control.requests(method="POST")[1]["body"] == {"custom_field_id": fields["Plan"], "value": "pro"}


def test_unchanged_custom_field_values_are_not_written_again(crm, control, fields):
    crm.Identify(identify(plan="pro", ltv=10))
    before = len(control.requests())
    same = crm.Identify(identify(plan="pro", ltv=10))
    assert same.contact_cache_hit and same.action == pb.ACTION_NONE
    assert api_calls(control, before) == []
    changed = crm.Identify(identify(plan="business", ltv=10))
    assert api_calls(control, before) == [("POST", f"/contacts/{changed.contact_id}/custom_fields")]
    [contact] = control.contacts()
    assert contact["custom_field_data"][str(fields["Plan"])] == "business"


def test_an_unknown_custom_field_name_is_refused_before_the_contact_is_written(make_sidecar, control, fields):
    sidecar = make_sidecar(customFieldMap=[{"from": "plan", "to": "Subscription"}])
    channel = grpc.insecure_channel(sidecar.address)
    with pytest.raises(grpc.RpcError) as caught:
        pb_stub(channel).Identify(identify(plan="pro"))
    channel.close()
    refused = failure(caught.value)
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION and refused.reason == "CUSTOM_FIELD_NOT_FOUND"
    assert api_calls(control) == [("GET", "/channels"), ("GET", "/custom_fields")]
    assert control.contacts() == []


def test_a_trait_that_is_an_object_is_invalid_and_nothing_is_written(crm, control):
    with pytest.raises(grpc.RpcError) as caught:
        crm.Identify(identify(plan={"tier": "pro"}))
    refused = failure(caught.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and refused.field == "traits.plan"
    assert not control.requests(method="POST") and control.contacts() == []


def test_a_custom_field_failing_for_good_is_reported_and_the_contact_stands(crm, control, fields):
    control.add_fault(method="POST", path="/api/v2/contacts/", status=500, count=-1)
    result = crm.Identify(identify(name="Ann", plan="pro"))
    assert result.action == pb.ACTION_CREATE_CONTACT
    [failed] = result.failed_followups
    assert (failed.kind, failed.target, failed.reason) == ("custom_field", "Plan", "TRENGO_UNAVAILABLE")
    [contact] = control.contacts()
    assert contact["id"] == result.contact_id and contact["custom_field_data"] == {}
    control.clear_faults()
    again = crm.Identify(identify(name="Ann", plan="pro"))  # not remembered as written: tried again
    assert not again.failed_followups
    assert control.contacts()[0]["custom_field_data"] == {str(fields["Plan"]): "pro"}


def test_a_label_whose_answer_was_lost_is_sent_again_but_a_note_never(shop, control, ann):
    """Adding a label twice adds it once, so it is resent; a note twice would be two notes."""
    _, stub = shop
    for kind in ("messages", "labels"):
        path = f"/api/v2/tickets/{FIRST_TICKET}/{kind}"
        control.add_fault(method="POST", path=path, drop=True, after=True, count=1)
    result = stub.Track(order())
    [failed] = result.failed_followups
    assert (failed.kind, failed.reason) == ("note", "TRENGO_OUTCOME_UNKNOWN")
    assert len(control.requests(path_prefix=f"/api/v2/tickets/{FIRST_TICKET}/messages")) == 1
    labels = control.requests(path_prefix=f"/api/v2/tickets/{FIRST_TICKET}/labels")
    assert [r["status"] for r in labels] == [0, 200, 200]
    [ticket] = control.tickets()
    assert len(ticket["messages"]) == 1  # the note was written; only its answer was lost
    assert [label["name"] for label in ticket["labels"]] == ["VIP", "Orders"]


def test_the_python_client_reports_the_follow_ups_that_did_not_land(shop, control, ann):
    sidecar, _ = shop
    control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/labels", status=422, count=1)
    with TrengoSidecarClient(sidecar.address, timeout=10) as client:
        result = client.track("Order Placed", email="ann@example.com", properties={"order_id": "A-1"})
    assert result.ticket_id == FIRST_TICKET
    [failed] = result.failed_followups
    assert isinstance(failed, FollowUpFailure)
    assert (failed.kind, failed.target, failed.reason) == ("label", "VIP", "TRENGO_REJECTED")
    [ticket] = control.tickets()
    assert [label["name"] for label in ticket["labels"]] == ["Orders"]


def test_the_log_line_warns_of_follow_ups_that_did_not_land(shop, control, ann, json_lines):
    _, stub = shop
    control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/labels", status=422, count=1)
    stub.Track(order())
    [line] = handled(json_lines, 1)
    assert line["code"] == "OK" and line["level"] == "warning"
    assert line["failed_followups"] == "label:VIP" and line["trengo_calls"] == 7


def test_the_deliver_stream_does_the_follow_ups_and_reports_their_failures(shop, control, ann):
    _, stub = shop
    control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/labels", status=422, count=1)
    requests = [pb.DeliverRequest(id=f"o{i}", track=order(order_id=f"A-{i}")) for i in range(3)]
    answers = {a.id: a.result for a in stub.Deliver(iter(requests))}
    assert {a.action for a in answers.values()} == {pb.ACTION_CREATE_TICKET}
    failed = [(a.ticket_id, f.kind, f.target) for a in answers.values() for f in a.failed_followups]
    assert failed == [(FIRST_TICKET, "label", "VIP")]
    tickets = control.tickets()
    assert len(tickets) == 3 and all(len(t["messages"]) == 1 for t in tickets)
    assert sorted(len(t["labels"]) for t in tickets) == [1, 2, 2]


def test_follow_up_failures_and_their_calls_are_counted_in_metrics(shop, control, ann):
    sidecar, stub = shop
    server = start_metrics("127.0.0.1:0", sidecar.sidecar)
    try:
        control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/labels", status=422, count=1)
        stub.Track(order(message_id="m-1"))
        stub.Track(order(message_id="m-1"))  # a replay: not counted again
        _, samples = scrape(server.url)
    finally:
        server.close()
    failures = "trengo_sidecar_followup_failures_total"
    assert value(samples, failures, kind="label") == 1 and value(samples, failures, kind="note") == 0
    requests = "trengo_sidecar_trengo_requests_total"
    assert value(samples, requests, endpoint="/tickets/{id}/labels", method="POST", status="422") == 1
    assert value(samples, requests, endpoint="/tickets/{id}/labels", method="POST", status="200") == 1
    assert value(samples, requests, endpoint="/tickets/{id}/messages", method="POST", status="201") == 1
    assert value(samples, requests, endpoint="/labels", method="GET", status="200") == 1


def test_concurrent_identifies_bringing_the_same_value_write_it_once(crm, control, fields):
    first = crm.Identify(identify(name="Ann"))
    # every write held for a second: the eight identifies all get to their custom field while it is in flight
    path = f"/api/v2/contacts/{first.contact_id}/custom_fields"
    control.add_fault(method="POST", path=path, delay=1.0, count=-1)
    request = identify(name="Ann", plan="pro")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: crm.Identify(request, timeout=10), range(8)))
    assert all(not r.failed_followups and r.contact_id == first.contact_id for r in results)
    assert len(control.requests(path_prefix="/api/v2/contacts/", method="POST")) == 1
    assert sum(r.url.endswith("/custom_fields") for result in results for r in result.requests) == 1
    assert control.contacts()[0]["custom_field_data"] == {str(fields["Plan"]): "pro"}


def test_grpcurl_shows_the_follow_ups_and_a_failed_one(shop, control, ann, grpcurl):
    sidecar, _ = shop
    control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/labels", status=422, count=1)
    body = {
        "event": "Order Placed",
        "properties": {"order_id": "A-17"},
        "context": {"traits": {"email": ann["identifier"]}},
    }
    answer = ok(grpcurl(sidecar.address, "trengo.sidecar.v1.TrengoSidecar/Track", body=body))
    assert [r["url"].rsplit("/", 1)[1] for r in answer["requests"]][-3:] == ["messages", "labels", "labels"]
    [failed] = answer["failed_followups"]
    assert failed["kind"] == "label" and failed["target"] == "VIP" and failed["reason"] == "TRENGO_REJECTED"


# --- queued delivery and a shared store ----------------------------------------------


def test_a_queued_track_gets_its_note_and_labels_and_reports_a_failed_one(
    make_sidecar, control, ann, labels, tmp_path
):
    config = {**FAST_QUEUE, "eventTemplateMap": [*FAST_QUEUE["eventTemplateMap"], ORDER]}
    _, stub = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", **config).stub()
    control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/labels", status=422, count=1)
    accepted = stub.Enqueue(pb.EnqueueRequest(track=order(message_id="q-1")), timeout=5)
    status = settled(stub, [accepted.message_id])[accepted.message_id]
    assert status.state == pb.DELIVERY_STATE_DELIVERED and status.result.ticket_id == FIRST_TICKET
    [failed] = status.result.failed_followups
    assert (failed.kind, failed.target, failed.reason) == ("label", "VIP", "TRENGO_REJECTED")
    [ticket] = control.tickets()
    assert len(ticket["messages"]) == 1 and [label["name"] for label in ticket["labels"]] == ["Orders"]


def test_a_replay_from_a_sqlite_store_gives_back_the_failed_follow_ups(
    make_sidecar, control, ann, labels, tmp_path
):
    sidecar = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", eventTemplateMap=[ORDER], maxAttempts=1)
    _, stub = sidecar.stub()
    control.add_fault(method="POST", path=f"/api/v2/tickets/{FIRST_TICKET}/messages", status=503, count=1)
    first = stub.Track(order(message_id="m-s1"))
    again = stub.Track(order(message_id="m-s1"))
    assert again.replayed and again.ticket_id == first.ticket_id
    assert [(f.kind, f.reason) for f in again.failed_followups] == [("note", "TRENGO_UNAVAILABLE")]
    assert list(again.failed_followups) == list(first.failed_followups)
    assert len(control.tickets()) == 1

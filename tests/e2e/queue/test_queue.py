"""Enqueue and the queue's RPCs, end to end: a real sidecar on SQLite, the simulator as Trengo."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.observe.metrics import install_metrics
from sidecar.simulator import SimulatorControl
from tests.support.grpc_helpers import failure
from tests.support.harness import SidecarThread, struct
from tests.support.queue_helpers import FAST_QUEUE, identify, order, settled, subject_order, wait_for
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

TICKETS = "/api/v2/tickets"
Start = Callable[..., pb_grpc.TrengoSidecarStub]


@pytest.fixture
def start(make_sidecar: Callable[..., SidecarThread], tmp_path: Path) -> Start:
    def start(**overrides: Any) -> pb_grpc.TrengoSidecarStub:
        config = {"store": f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE, **overrides}
        _, stub = make_sidecar(**config).stub()
        return stub

    return start


def test_with_the_memory_store_enqueue_is_refused_naming_store(make_sidecar, control):
    _, stub = make_sidecar(store="memory:").stub()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Enqueue(identify("ann"), timeout=5)
    found = failure(caught.value)
    assert found.code == grpc.StatusCode.FAILED_PRECONDITION and "store" in found.message, found
    assert control.requests() == []


def test_an_enqueued_identify_then_track_is_delivered_and_reported(start, control: SimulatorControl):
    stub = start()
    first = stub.Enqueue(identify("ann", message_id="m-1", name="Ann Lee"), timeout=5)
    second = stub.Enqueue(order("ann", 1), timeout=5)
    assert (first.message_id, first.duplicate) == ("m-1", False)
    assert len(second.message_id) == 32 and not second.duplicate  # generated: the event had none
    statuses = settled(stub, ["m-1", second.message_id])
    assert statuses["m-1"].state == pb.DELIVERY_STATE_DELIVERED
    assert statuses["m-1"].result.action == pb.ACTION_CREATE_CONTACT
    ticket = statuses[second.message_id]
    [stored] = control.tickets()
    assert ticket.result.ticket_id == stored["id"] and stored["subject"] == "Order 1"
    assert ticket.attempts == 1 and ticket.accepted_at.seconds > 0
    assert [c["name"] for c in control.contacts()] == ["Ann Lee"]


def test_the_same_message_id_is_accepted_once(start, control):
    stub = start()
    stub.Enqueue(identify("ann"), timeout=5)
    answers = [stub.Enqueue(order("ann", 1, message_id="once"), timeout=5) for _ in range(3)]
    assert [(a.message_id, a.duplicate) for a in answers] == [("once", False), ("once", True), ("once", True)]
    assert settled(stub, ["once"])["once"].state == pb.DELIVERY_STATE_DELIVERED
    assert len(control.requests(path_prefix=TICKETS)) == 1 and len(control.tickets()) == 1


@pytest.mark.parametrize(
    ("request_", "code", "reason", "field"),
    [
        (pb.EnqueueRequest(), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT", "event"),
        (
            pb.EnqueueRequest(identify=pb.IdentifyRequest(traits=struct({"email": "not an address"}))),
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT", "traits.email",
        ),
        (
            pb.EnqueueRequest(identify=pb.IdentifyRequest(user_id="u")),
            grpc.StatusCode.INVALID_ARGUMENT, "MISSING_IDENTIFIER", "",
        ),
        (
            pb.EnqueueRequest(track=pb.TrackRequest(event="Nobody mapped this", context=struct(
                {"traits": {"email": "ann@example.com"}}))),
            grpc.StatusCode.FAILED_PRECONDITION, "EVENT_NOT_MAPPED", "",
        ),
        (
            pb.EnqueueRequest(
                identify=pb.IdentifyRequest(traits=struct({"email": "a@example.com"}), dry_run=True)
            ),
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_EVENT", "dry_run",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_refused_as_the_synchronous_call_refuses_it_and_nothing_is_queued(
    start, control, request_, code, reason, field
):
    stub = start()
    with pytest.raises(grpc.RpcError) as caught:
        stub.Enqueue(request_, timeout=5)
    found = failure(caught.value)
    assert (found.code, found.reason) == (code, reason), found
    if field:
        assert found.field == field
    queued = [
        stub.ListDeliveries(pb.ListDeliveriesRequest(state=state), timeout=5).deliveries
        for state in (pb.DELIVERY_STATE_QUEUED, pb.DELIVERY_STATE_DELIVERING, pb.DELIVERY_STATE_DELIVERED)
    ]
    assert queued == [[], [], []]
    assert control.requests() == []


def test_an_unknown_message_id_is_not_found(start):
    stub = start()
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetDelivery(pb.GetDeliveryRequest(message_id="never-sent"), timeout=5)
    assert failure(caught.value).code == grpc.StatusCode.NOT_FOUND


def test_a_422_fails_that_event_at_once_and_the_persons_later_events_go_on(start, control):
    stub = start()
    ids = [stub.Enqueue(identify("ann"), timeout=5).message_id]
    control.add_fault(method="POST", path=TICKETS, status=422, count=1,
                      body={"message": "The given data was invalid.", "errors": {"subject": ["bad"]}})
    ids += [stub.Enqueue(order("ann", n), timeout=5).message_id for n in (1, 2, 3)]
    statuses = settled(stub, ids)
    rejected = statuses[ids[1]]
    assert rejected.state == pb.DELIVERY_STATE_FAILED and rejected.attempts == 1
    assert rejected.error.reason == "TRENGO_REJECTED" and "422" in rejected.error.message
    assert [statuses[m].state for m in ids[2:]] == [pb.DELIVERY_STATE_DELIVERED] * 2
    assert subject_order(control.tickets()) == [2, 3]


def test_an_outage_of_503s_delays_delivery_but_nothing_fails(start, control):
    stub = start(maxAttempts=1)
    control.add_fault(status=503, count=-1)  # every call, until cleared
    ids = [stub.Enqueue(identify(p), timeout=5).message_id for p in ("ann", "bob")]
    ids += [stub.Enqueue(order(p, n), timeout=5).message_id for n in (1, 2) for p in ("ann", "bob")]
    wait_for(lambda: len(control.requests()) >= 6, "several failed attempts")
    heads = [stub.GetDelivery(pb.GetDeliveryRequest(message_id=m), timeout=5) for m in ids[:2]]
    assert {h.state for h in heads} <= {pb.DELIVERY_STATE_RETRYING, pb.DELIVERY_STATE_DELIVERING}
    later = stub.GetDelivery(pb.GetDeliveryRequest(message_id=ids[2]), timeout=5)
    assert later.state == pb.DELIVERY_STATE_QUEUED and later.attempts == 0  # held behind Ann's identify
    control.clear_faults()
    statuses = settled(stub, ids)
    assert {s.state for s in statuses.values()} == {pb.DELIVERY_STATE_DELIVERED}
    assert statuses[ids[0]].attempts > 1
    assert sorted(subject_order(control.tickets())) == [1, 1, 2, 2]
    assert len(control.contacts()) == 2


def test_a_retrying_event_reports_its_last_error_and_next_attempt(start, control):
    stub = start(maxAttempts=1, queueRetryBaseSeconds=30, queueRetryMaxSeconds=30)
    control.add_fault(status=503, count=-1)
    message_id = stub.Enqueue(identify("ann"), timeout=5).message_id
    status = wait_for(
        lambda: (s := stub.GetDelivery(pb.GetDeliveryRequest(message_id=message_id), timeout=5)).state
        == pb.DELIVERY_STATE_RETRYING and s,
        "the first attempt to fail",
    )
    assert status.error.reason == "TRENGO_UNAVAILABLE" and "503" in status.error.message
    assert 25 < status.next_attempt_at.seconds - status.accepted_at.seconds <= 31


def test_operators_list_failed_events_and_retry_them(start, control):
    stub = start()
    ids = [stub.Enqueue(identify(p), timeout=5).message_id for p in ("ann", "bob")]
    settled(stub, ids)
    control.add_fault(method="POST", path=TICKETS, status=422, count=2)
    failed = [stub.Enqueue(order(p, 1), timeout=5).message_id for p in ("ann", "bob")]
    settled(stub, failed)
    listed = stub.ListDeliveries(pb.ListDeliveriesRequest(state=pb.DELIVERY_STATE_FAILED), timeout=5)
    assert sorted(d.message_id for d in listed.deliveries) == sorted(failed)
    page = stub.ListDeliveries(pb.ListDeliveriesRequest(limit=1), timeout=5)  # FAILED by default
    assert len(page.deliveries) == 1 and page.next_page_token
    with pytest.raises(grpc.RpcError) as caught:
        stub.RetryDeliveries(pb.RetryDeliveriesRequest(message_ids=[ids[0]]), timeout=5)  # delivered
    assert failure(caught.value).code == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.RetryDeliveries(pb.RetryDeliveriesRequest(message_ids=[failed[0]]), timeout=5).retried == 1
    assert settled(stub, failed[:1])[failed[0]].state == pb.DELIVERY_STATE_DELIVERED
    assert stub.RetryDeliveries(pb.RetryDeliveriesRequest(all_failed=True), timeout=5).retried == 1
    assert settled(stub, failed[1:])[failed[1]].state == pb.DELIVERY_STATE_DELIVERED
    assert sorted(subject_order(control.tickets())) == [1, 1]


def test_watch_follows_outcomes_from_a_cursor_and_a_reconnect_misses_nothing(start, control):
    stub = start()
    ids = [stub.Enqueue(identify(f"p{i}"), timeout=5).message_id for i in range(4)]
    settled(stub, ids)
    stream = stub.WatchDeliveries(pb.WatchDeliveriesRequest(cursor=0), timeout=10)
    first = [next(stream) for _ in range(3)]  # each event: delivering, then delivered
    stream.cancel()
    later = [stub.Enqueue(identify(f"q{i}"), timeout=5).message_id for i in range(2)]
    settled(stub, later)
    stream = stub.WatchDeliveries(pb.WatchDeliveriesRequest(cursor=first[-1].cursor), timeout=10)
    rest = [next(stream) for _ in range(9)]
    stream.cancel()
    updates = first + rest
    delivered = [u.status.message_id for u in updates if u.status.state == pb.DELIVERY_STATE_DELIVERED]
    assert sorted(delivered) == sorted(ids + later)
    for message_id in ids + later:
        states = [u.status.state for u in updates if u.status.message_id == message_id]
        assert states == [pb.DELIVERY_STATE_DELIVERING, pb.DELIVERY_STATE_DELIVERED], (message_id, states)
    cursors = [u.cursor for u in updates]
    assert cursors == sorted(set(cursors))  # each change its own cursor, in order, none twice


def test_metrics_show_depth_by_state_the_oldest_age_attempts_and_failures(make_sidecar, tmp_path, control):
    thread = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE)
    registry = install_metrics(thread.sidecar, process=False)
    _, stub = thread.stub()
    ids = [stub.Enqueue(identify(p), timeout=5).message_id for p in ("ann", "bob")]
    control.add_fault(method="POST", path=TICKETS, status=422, count=1)
    ids.append(stub.Enqueue(order("ann", 1), timeout=5).message_id)
    settled(stub, ids)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    wait_for(lambda: sample("trengo_sidecar_queue_depth", state="delivered") == 2, "the stats to refresh")
    assert sample("trengo_sidecar_queue_depth", state="failed") == 1
    assert sample("trengo_sidecar_queue_depth", state="queued") == 0
    assert sample("trengo_sidecar_queue_failed") == 1
    assert sample("trengo_sidecar_queue_oldest_age_seconds") == 0  # nothing waits
    assert sample("trengo_sidecar_queue_attempts_total", outcome="delivered") == 2
    assert sample("trengo_sidecar_queue_attempts_total", outcome="failed") == 1
    assert sample("trengo_sidecar_rpcs_total", method="Enqueue", code="OK") == 3


def test_an_event_the_consent_filter_drops_is_answered_with_the_reason_and_not_queued(start, control):
    from tests.support.consent import CONSENT, DENIED, REASON, context
    stub = start(**CONSENT)
    request = pb.EnqueueRequest(identify=pb.IdentifyRequest(user_id="u1", context=context(DENIED)))
    answer = stub.Enqueue(request, timeout=5)
    assert answer.filtered_reason == REASON and answer.message_id and not answer.duplicate
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetDelivery(pb.GetDeliveryRequest(message_id=answer.message_id), timeout=5)
    assert failure(caught.value).code == grpc.StatusCode.NOT_FOUND
    assert control.requests() == []


def test_the_operator_cli_lists_failed_events_and_retries_one(make_sidecar, control, tmp_path):
    import subprocess
    import sys

    from tests.support.harness import cli_env

    thread = make_sidecar(store=f"sqlite:///{tmp_path}/state.db", **FAST_QUEUE)
    _, stub = thread.stub()
    ids = [stub.Enqueue(identify("ann"), timeout=5).message_id]
    control.add_fault(method="POST", path=TICKETS, status=422, count=1)
    ids.append(stub.Enqueue(order("ann", 1), timeout=5).message_id)
    settled(stub, ids)
    address = thread.address

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sidecar", "deliveries", "--address", address, *args]
        return subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=30)

    listed = cli("list", "--state", "failed")
    assert listed.returncode == 0, listed.stderr
    assert ids[1] in listed.stdout and "TRENGO_REJECTED" in listed.stdout and "1 failed" in listed.stdout
    assert ids[0] not in listed.stdout
    refused = cli("retry", ids[0])  # delivered, not failed
    assert refused.returncode == 1 and "FAILED_PRECONDITION" in refused.stderr
    retried = cli("retry", ids[1])
    assert retried.returncode == 0 and "queued again: 1" in retried.stdout, retried.stderr
    assert settled(stub, ids[1:])[ids[1]].state == pb.DELIVERY_STATE_DELIVERED
    shown = cli("get", ids[1], "--output", "json")
    assert json.loads(shown.stdout)["state"] == "DELIVERY_STATE_DELIVERED"
    assert cli("get", ids[1]).stdout.startswith(f"{ids[1]}  delivered  attempts=1")
    assert cli("retry").returncode == 2  # neither ids nor --all


def test_a_lost_answer_fails_as_unknown_and_an_operators_retry_sends_it_again(start, control):
    stub = start()
    ids = [stub.Enqueue(identify("ann"), timeout=5).message_id]
    control.add_fault(method="POST", path=TICKETS, drop=True, after=True, count=1)  # written, answer lost
    ids.append(stub.Enqueue(order("ann", 1, message_id="lost-1"), timeout=5).message_id)
    ids.append(stub.Enqueue(order("ann", 2), timeout=5).message_id)
    statuses = settled(stub, ids)
    assert statuses["lost-1"].state == pb.DELIVERY_STATE_FAILED
    assert statuses["lost-1"].error.reason == "TRENGO_OUTCOME_UNKNOWN" and statuses["lost-1"].attempts == 1
    assert statuses[ids[2]].state == pb.DELIVERY_STATE_DELIVERED  # the person's next event went on
    assert len(control.requests(path_prefix=TICKETS, method="POST")) == 2  # never resent by itself
    assert stub.RetryDeliveries(pb.RetryDeliveriesRequest(message_ids=["lost-1"]), timeout=5).retried == 1
    again = settled(stub, ["lost-1"])["lost-1"]
    assert again.state == pb.DELIVERY_STATE_DELIVERED and again.result.ticket_id > 0
    assert subject_order(control.tickets()) == [1, 2, 1]  # the operator chose to send it once more

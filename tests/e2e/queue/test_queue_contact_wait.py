"""A queued Track waits for its contact (issue 20, part 3): a real sidecar, the simulator as Trengo.

A Track whose contact is not found yet is retried with the queue's backoff for up to
queueContactWaitSeconds, while the person's queued identifies go first; the person's other events stay
behind it. The Track RPC is unchanged: CONTACT_NOT_FOUND at once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.simulator import SimulatorControl
from tests.support.grpc_helpers import failure
from tests.support.harness import SidecarThread, cli_env
from tests.support.ingest_helpers import ingest_config, post, url_of
from tests.support.queue_helpers import FAST_QUEUE, identify, order, settled, subject_order, wait_for
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

CONTACTS = "/api/v2/contacts"
TICKETS = "/api/v2/tickets"
Start = Callable[..., SidecarThread]


@pytest.fixture(params=["sqlite", "postgresql"])
def start(request: pytest.FixtureRequest, make_sidecar: Start, tmp_path: Path) -> Start:
    """A sidecar with the queue on SQLite or a real PostgreSQL (both claim with the same rule)."""
    sqlite = f"sqlite:///{tmp_path}/state.db"
    store = sqlite if request.param == "sqlite" else request.getfixturevalue("pg_url")

    def start(**overrides: Any) -> SidecarThread:
        return make_sidecar(**{"store": store, **FAST_QUEUE, **overrides})

    return start


def status_of(stub: pb_grpc.TrengoSidecarStub, message_id: str) -> pb.DeliveryStatus:
    return stub.GetDelivery(pb.GetDeliveryRequest(message_id=message_id), timeout=5)


def waiting(stub: pb_grpc.TrengoSidecarStub, message_id: str) -> pb.DeliveryStatus:
    """Its status once it has been tried and is retrying for want of its contact."""

    def check() -> pb.DeliveryStatus | None:
        found = status_of(stub, message_id)
        return found if found.state == pb.DELIVERY_STATE_RETRYING and found.attempts >= 1 else None

    return wait_for(check, f"{message_id} to wait for its contact")  # type: ignore[no-any-return]


def test_a_track_enqueued_before_its_identify_is_delivered_once_the_identify_lands(
    start: Start, control: SimulatorControl
) -> None:
    thread = start()
    stub = thread.stub()[1]
    first = stub.Enqueue(order("ann", 1, message_id="t1"), timeout=5).message_id
    shown = waiting(stub, first)
    # What an operator sees meanwhile: retrying, with the reason and the wait.
    assert shown.error.reason == "CONTACT_NOT_FOUND", shown
    assert "queueContactWaitSeconds" in shown.error.message and "600 s" in shown.error.message
    assert shown.next_attempt_at.ToNanoseconds() > 0
    listed = stub.ListDeliveries(pb.ListDeliveriesRequest(state=pb.DELIVERY_STATE_RETRYING), timeout=5)
    assert [(d.message_id, d.error.reason) for d in listed.deliveries] == [("t1", "CONTACT_NOT_FOUND")]
    command = [sys.executable, "-m", "sidecar", "deliveries", "--address", thread.address, "list", "--state",
               "retrying"]  # fmt: skip
    # A waiting track is "delivering" for the moment of each retry (every <= 0.4 s here), and the CLI's
    # start-up takes longer than that, so one listing may land inside an attempt: wait for a listing
    # that catches it between two attempts, as an operator re-running the command would.
    def listing() -> str:
        return subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=30).stdout

    line = wait_for(listing, "the CLI to list t1 as retrying")
    assert line.startswith("t1  retrying  attempts=") and "  next=20" in line, line
    assert "CONTACT_NOT_FOUND: waiting up to 600 s (queueContactWaitSeconds) for the contact" in line
    # The person's other events queue behind the waiting track; the identify may pass them.
    ids = [first, stub.Enqueue(order("ann", 2, message_id="t2"), timeout=5).message_id]
    ids.append(stub.Enqueue(identify("ann", message_id="i1", name="Ann Lee"), timeout=5).message_id)
    ids.append(stub.Enqueue(order("ann", 3, message_id="t3"), timeout=5).message_id)
    statuses = settled(stub, ids)
    assert {m: s.state for m, s in statuses.items()} == dict.fromkeys(ids, pb.DELIVERY_STATE_DELIVERED)
    assert statuses["i1"].result.action == pb.ACTION_CREATE_CONTACT
    assert statuses["t1"].attempts >= 2 and statuses["t2"].attempts == 1 and statuses["t3"].attempts == 1
    # The simulator: one contact, created once; the tickets in the person's order.
    assert [c["name"] for c in control.contacts()] == ["Ann Lee"]
    creates = [r for r in control.requests(method="POST") if r["path"].endswith("/contacts")]
    assert len(creates) == 1
    assert subject_order(control.tickets()) == [1, 2, 3]
    contact_id = control.contacts()[0]["id"]
    assert {t["contact_id"] for t in control.tickets()} == {contact_id}


def test_a_track_with_no_identify_fails_contact_not_found_after_the_wait(
    start: Start, control: SimulatorControl
) -> None:
    stub = start(queueContactWaitSeconds=1.5).stub()[1]
    ids = [stub.Enqueue(order("nobody", n, message_id=f"n{n}"), timeout=5).message_id for n in (1, 2)]
    statuses = settled(stub, ids)
    first = statuses["n1"]
    assert first.state == pb.DELIVERY_STATE_FAILED and first.error.reason == "CONTACT_NOT_FOUND", first
    assert "did not appear within 1.5 s (queueContactWaitSeconds)" in first.error.message
    assert first.attempts >= 3  # retried on the schedule (0.1, 0.2, 0.4 ... s) until the wait ran out
    assert statuses["n2"].state == pb.DELIVERY_STATE_FAILED  # behind it all along, its own wait over too
    assert statuses["n2"].error.reason == "CONTACT_NOT_FOUND"
    # Each attempt was one search, and nothing was written.
    searches = control.requests(method="GET", path_prefix=CONTACTS)
    assert len(searches) == first.attempts + statuses["n2"].attempts
    assert control.contacts() == [] and control.tickets() == []
    assert control.requests(method="POST") == []


def test_the_track_rpc_still_answers_contact_not_found_at_once(
    start: Start, control: SimulatorControl
) -> None:
    stub = start().stub()[1]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Track(order("nobody", 1).track, timeout=10)
    found = failure(caught.value)
    assert found.code == grpc.StatusCode.NOT_FOUND and found.reason == "CONTACT_NOT_FOUND", found
    assert "queueContactWaitSeconds" not in found.message
    assert len(control.requests(method="GET", path_prefix=CONTACTS)) == 1  # one search, no wait


def test_an_ingested_batch_with_the_track_before_the_identify_is_delivered(
    start: Start, control: SimulatorControl, tmp_path: Path
) -> None:
    """The HTTP ingest goes through the same queue: an SDK's batch that holds a person's track before
    their identify (a flush that ordered them so, or an app that tracks first) delivers both."""
    thread = start(**{k: v for k, v in ingest_config("").items() if k != "store"})
    context = {"traits": {"email": "cleo@example.com"}}
    batch = [
        {"type": "track", "userId": "cleo", "messageId": "h-t1", "event": "Order", "properties": {"n": 1},
         "context": context},
        {"type": "identify", "userId": "cleo", "messageId": "h-i1",
         "traits": {"email": "cleo@example.com", "name": "Cleo"}},
    ]  # fmt: skip
    answer = post(url_of(thread), "batch", {"batch": batch})
    assert answer.status_code == 200, answer.text
    stub = thread.stub()[1]
    statuses = settled(stub, ["h-t1", "h-i1"])
    assert [statuses[m].state for m in ("h-t1", "h-i1")] == [pb.DELIVERY_STATE_DELIVERED] * 2
    assert [c["name"] for c in control.contacts()] == ["Cleo"]
    assert subject_order(control.tickets()) == [1]

"""SIGTERM with queued deliveries in flight: claiming stops, in-flight work finishes or goes back."""

from __future__ import annotations

import signal
from pathlib import Path

from sidecar.simulator import SimulatorThread
from tests.support.harness import EMAIL_CHANNEL
from tests.support.queue_helpers import QUEUE_TEMPLATES, order, settled, wait_for
from tests.support.queue_procs import sidecar_process
from trengo.sidecar.v1 import sidecar_pb2 as pb

TICKETS = "/api/v2/tickets"
CONFIG = {"eventTemplateMap": QUEUE_TEMPLATES, "queueConcurrency": 1, "queuePollSeconds": 0.05}


def held(control, path: str, method: str) -> bool:
    return any(r["status"] is None for r in control.requests(path, method))


def test_sigterm_finishes_the_delivery_in_flight_and_claims_nothing_more(
    sim: SimulatorThread, control, tmp_path: Path
):
    control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    store = f"sqlite:///{tmp_path}/state.db"
    process = sidecar_process(tmp_path, sim.base_url, "term", store=store, shutdownGraceSeconds=5, **CONFIG)
    process.start()
    control.add_fault(method="POST", path=TICKETS, delay=1.0, count=1)
    stub = process.stub()
    ids = [stub.Enqueue(order("ann", n), timeout=5).message_id for n in (1, 2, 3)]
    wait_for(lambda: held(control, TICKETS, "POST"), "the first ticket write to be held")
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(10) == 0, process.output()
    assert [t["subject"] for t in control.tickets()] == ["Order 1"]  # finished; nothing new claimed
    process.start()
    statuses = settled(process.stub(), ids)
    assert [statuses[m].state for m in ids] == [pb.DELIVERY_STATE_DELIVERED] * 3
    assert statuses[ids[0]].attempts == 1  # delivered once, before the stop
    assert [t["subject"] for t in control.tickets()] == ["Order 1", "Order 2", "Order 3"]
    process.stop()


def test_past_the_grace_an_unsent_event_goes_back_unattempted(sim: SimulatorThread, control, tmp_path: Path):
    control.add_contact(name="Ann", identifier="ann@example.com", channel_id=EMAIL_CHANNEL)
    store = f"sqlite:///{tmp_path}/state.db"
    process = sidecar_process(tmp_path, sim.base_url, "cut", store=store, shutdownGraceSeconds=0.3, **CONFIG)
    process.start()
    control.add_fault(method="GET", path="/api/v2/contacts", delay=3.0, count=1)  # the search, held
    stub = process.stub()
    message_id = stub.Enqueue(order("ann", 1), timeout=5).message_id
    wait_for(lambda: held(control, "/api/v2/contacts", "GET"), "the search to be held")
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(10) == 0, process.output()
    # A sidecar that only accepts (no worker) shows the store as the stop left it.
    accept_only = {**CONFIG, "queueConcurrency": 0}
    reader = sidecar_process(tmp_path, sim.base_url, "reader", store=store, **accept_only)
    status = reader.start().stub().GetDelivery(pb.GetDeliveryRequest(message_id=message_id), timeout=5)
    reader.stop()
    assert (status.state, status.attempts) == (pb.DELIVERY_STATE_QUEUED, 0)  # given back, not counted
    process.start()
    final = settled(process.stub(), [message_id])[message_id]
    assert final.state == pb.DELIVERY_STATE_DELIVERED and final.attempts == 1
    assert [t["subject"] for t in control.tickets()] == ["Order 1"]
    process.stop()

"""Guarantees that span a restart: real sidecar processes, real signals, one durable store.

Each test cuts a sidecar off with a ticket write in flight (SIGTERM past the grace, or SIGKILL),
starts a NEW process on the same store, and sends the same message_id again. What the simulator
recorded (its tickets, its POSTs) is what the assertions are about, not only the sidecar's answer.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.support.fleet import Fleet, Sidecar, wait_for
from tests.support.grpc_helpers import Failure, failure
from tests.support.harness import struct
from trengo.sidecar.v1 import sidecar_pb2 as pb

TICKETS = "/api/v2/tickets"
CONTACTS = "/api/v2/contacts"


@pytest.fixture
def fleet(sim: SimulatorThread, control: SimulatorControl, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, sim.base_url)
    yield fleet
    fleet.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each durable store: a SQLite file, or a fresh database on the session's real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_url"))


def track(message_id: str) -> pb.TrackRequest:
    return pb.TrackRequest(
        event="Checked Out", message_id=message_id, context=struct({"traits": {"email": "ann@example.com"}})
    )


def unanswered(control: SimulatorControl, path: str) -> bool:
    return any(r["status"] is None for r in control.requests(path_prefix=path))


def refused(sidecar: Sidecar, message_id: str) -> Failure:
    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.Track(track(message_id), timeout=20)
    return failure(caught.value)


def cut_off(fleet: Fleet, control: SimulatorControl, store: str, sig: int, path: str) -> Sidecar:
    """A sidecar whose Track "m-1" is held by Trengo at ``path`` when it gets ``sig``; it is gone after."""
    [sidecar] = fleet.spawn(1, store=store, shutdownGraceSeconds=2, requestTimeoutSeconds=20)
    # Trengo does the work at once and holds its answer (a ticket POST: the ticket exists).
    control.add_fault(method="GET" if path == CONTACTS else "POST", path=path, delay=30, after=True)
    call = sidecar.stub.Track.future(track("m-1"), timeout=40)
    wait_for(lambda: unanswered(control, path), f"the call to {path} to reach Trengo")
    assert sidecar.popen is not None
    sidecar.popen.send_signal(sig)
    assert sidecar.popen.wait(20) == (0 if sig == signal.SIGTERM else -signal.SIGKILL), sidecar.output()
    assert unanswered(control, path)  # it went down with the call in flight, not after Trengo answered
    if sig == signal.SIGTERM:
        with pytest.raises(grpc.RpcError) as caught:
            call.result()
        first = failure(caught.value)
        assert first.code == grpc.StatusCode.UNAVAILABLE and first.reason == "TRENGO_OUTCOME_UNKNOWN", first
        assert first.retry_delay is None, first  # a retry could open a second ticket
    else:
        call.cancel()
    sidecar.kill()  # closes the test's channel to the dead process
    control.clear_faults()
    return sidecar


def test_an_unknown_outcome_stored_at_sigterm_is_answered_by_a_new_process(fleet, control, store, ann):
    """Issue 10 item 1 across a restart: the cut-off write's TRENGO_OUTCOME_UNKNOWN outlives the process."""
    cut_off(fleet, control, store, signal.SIGTERM, TICKETS)
    [restarted] = fleet.spawn(1, store=store)
    again = refused(restarted, "m-1")
    assert again.code == grpc.StatusCode.UNAVAILABLE and again.reason == "TRENGO_OUTCOME_UNKNOWN", again
    assert again.retry_delay is None and "POST /tickets" in again.message, again
    assert len(control.tickets()) == 1
    assert len(control.requests(path_prefix=TICKETS, method="POST")) == 1  # the new process sent nothing
    assert restarted.stub.Track(track("m-2"), timeout=20).ticket_id > 0  # and it works otherwise


def test_a_ticket_write_in_flight_at_sigkill_is_not_sent_again_after_a_restart(fleet, control, store, ann):
    """SIGKILL leaves no answer to store; the 'write started' mark made before the POST stands for it."""
    cut_off(fleet, control, store, signal.SIGKILL, TICKETS)
    [restarted] = fleet.spawn(1, store=store)
    again = refused(restarted, "m-1")
    assert again.code == grpc.StatusCode.UNAVAILABLE and again.reason == "TRENGO_OUTCOME_UNKNOWN", again
    assert again.retry_delay is None, again
    assert "POST /tickets" in again.message and "stopped" in again.message, again
    assert len(control.tickets()) == 1
    assert len(control.requests(path_prefix=TICKETS, method="POST")) == 1
    # The answer is now stored like any lost answer: a second retry hears the same.
    assert refused(restarted, "m-1").message == again.message
    assert len(control.tickets()) == 1


def test_a_sidecar_killed_before_its_ticket_write_left_delivers_after_a_restart(fleet, control, store, ann):
    """The mark is made just before the write, not at the start of the call: nothing sent, nothing kept."""
    cut_off(fleet, control, store, signal.SIGKILL, CONTACTS)  # killed during the contact search
    assert control.requests(path_prefix=TICKETS) == []
    [restarted] = fleet.spawn(1, store=store)
    result = restarted.stub.Track(track("m-1"), timeout=20)
    assert result.ticket_id > 0 and not result.replayed
    [ticket] = control.tickets()
    assert ticket["id"] == result.ticket_id
    assert restarted.stub.Track(track("m-1"), timeout=20).replayed  # and it is kept as usual
    assert len(control.tickets()) == 1


def test_a_ticket_write_answered_with_a_failure_leaves_no_mark(fleet, control, store, ann):
    """A 503 is Trengo saying it wrote nothing: the mark goes, and the message_id may be sent again,
    also from another process (failures are not remembered)."""
    [first] = fleet.spawn(1, store=store)
    control.add_fault(method="POST", path=TICKETS, status=503, count=10)  # every attempt
    failed = refused(first, "m-1")
    assert failed.code == grpc.StatusCode.UNAVAILABLE and failed.reason == "TRENGO_UNAVAILABLE", failed
    assert control.tickets() == [] and control.requests(path_prefix=TICKETS, method="POST")
    control.clear_faults()
    first.kill()
    [restarted] = fleet.spawn(1, store=store)
    result = restarted.stub.Track(track("m-1"), timeout=20)
    assert result.ticket_id > 0 and not result.replayed
    assert len(control.tickets()) == 1


def test_a_sidecar_waiting_for_a_killed_ones_message_id_answers_outcome_unknown(fleet, control, store, ann):
    """Across processes: b waits for a's message_id lock; a is SIGKILLed mid-ticket; the lock dies
    with a, and b finds the mark rather than writing a second ticket (whether it was already waiting
    or came just after, the answer is the same)."""
    a, b = fleet.spawn(2, store=store, requestTimeoutSeconds=20)
    control.add_fault(method="POST", path=TICKETS, delay=30, after=True)
    first = a.stub.Track.future(track("m-1"), timeout=40)
    wait_for(lambda: unanswered(control, TICKETS), "a's ticket POST to reach Trengo")
    waiting = b.stub.Track.future(track("m-1"), timeout=20)
    a.kill()
    first.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        waiting.result()
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert f.retry_delay is None, f
    assert len(control.tickets()) == 1
    assert len(control.requests(path_prefix=TICKETS, method="POST")) == 1

"""Shutdown: the real CLI (``python -m sidecar --config ...``) in a subprocess, SIGTERM with a call in flight.

The call in flight is held by a simulator ``delay`` fault, so "in flight" is a fact the simulator
records (a request it has not answered yet), not a guess about timing. On SIGTERM the sidecar turns
health NOT_SERVING first, lets the call finish within ``shutdownGraceSeconds``, and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.deadline import Deadline
from sidecar.plan import events
from sidecar.simulator import SimulatorControl
from sidecar.trengo_api.answers import OutcomeUnknown
from tests.support.grpc_helpers import failure
from tests.support.harness import SMS_CHANNEL, free_port, struct
from tests.support.processes import (
    NOT_SERVING,
    SERVING,
    track,
    wait_for,
)
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
TICKETS = "/api/v2/tickets"






def unanswered(control: SimulatorControl, path: str) -> bool:
    """Whether the simulator holds a request to ``path`` it has not answered yet."""
    return any(r["status"] is None for r in control.requests(path_prefix=path))






def test_sigterm_lets_the_call_in_flight_finish_and_exits_0(spawn, control, ann):
    process = spawn(shutdownGraceSeconds=5)
    control.add_fault(method="POST", path=TICKETS, delay=1.0)
    with grpc.insecure_channel(process.address) as channel:
        call = pb_grpc.TrengoSidecarStub(channel).Track.future(track(), timeout=10)
        wait_for(lambda: unanswered(control, TICKETS), "the ticket write to reach Trengo")
        process.popen.send_signal(signal.SIGTERM)
        result = call.result()  # OK: the drain let it finish
    assert process.popen.wait(timeout=5) == 0, process.output()
    [ticket] = control.tickets()
    assert ticket["id"] == result.ticket_id and ticket["contact_id"] == ann["id"]
    assert "draining" in process.output()


def test_health_goes_not_serving_before_the_call_in_flight_ends(spawn, control, ann):
    process = spawn(shutdownGraceSeconds=5)
    control.add_fault(method="POST", path=TICKETS, delay=2.0)  # a drain wide enough for a slow SIGTERM
    with grpc.insecure_channel(process.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert next(watch).status == SERVING
        call = pb_grpc.TrengoSidecarStub(channel).Track.future(track(), timeout=10)
        wait_for(lambda: unanswered(control, TICKETS), "the ticket write to reach Trengo")
        process.popen.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        assert unanswered(control, TICKETS)  # health changed first; the call is still running
        watch.cancel()  # an open Watch is a call in flight too: let the drain end with the Track
        assert call.result().ticket_id > 0
    assert process.popen.wait(timeout=5) == 0, process.output()
    assert len(control.tickets()) == 1


def test_a_health_check_during_the_drain_answers_not_serving(spawn, control, ann):
    process = spawn(shutdownGraceSeconds=5)
    control.add_fault(method="POST", path=TICKETS, delay=2.0)  # a drain wide enough for a slow SIGTERM
    with grpc.insecure_channel(process.address) as channel:
        call = pb_grpc.TrengoSidecarStub(channel).Track.future(track(), timeout=10)
        wait_for(lambda: unanswered(control, TICKETS), "the ticket write to reach Trengo")
        process.popen.send_signal(signal.SIGTERM)
        before: list[int] = []  # SIGTERM is handled asynchronously: SERVING until then

        def turned() -> bool:
            before.append(process.health())
            return before[-1] != SERVING

        wait_for(turned, "health to stop answering SERVING", timeout=5)
        assert unanswered(control, TICKETS), "the ticket write ended before health changed"
        answers = before[-1:]  # every answer from the change on, while the ticket write is in flight
        while unanswered(control, TICKETS) and len(answers) < 5:
            answers.append(process.health())
            time.sleep(0.05)
        assert call.result().ticket_id > 0
    assert process.popen.wait(timeout=5) == 0, process.output()
    assert len(answers) > 1 and set(answers) == {NOT_SERVING}, answers


def test_a_call_cut_off_before_any_write_is_shutting_down_with_retry_info(spawn, control):
    process = spawn(shutdownGraceSeconds=None, env={"SIDECAR_SHUTDOWN_GRACE_SECONDS": "0.3"})
    # A slow search, so the call cut off has written nothing and nothing lands late.
    control.add_fault(method="GET", path="/api/v2/contacts", delay=2.0)
    with grpc.insecure_channel(process.address) as channel:
        # A phone number: on an SMS channel the search comes before the create.
        sms = [pb.ExternalId(type="trengoChannelId", id=str(SMS_CHANNEL))]
        request = pb.IdentifyRequest(traits=struct({"phone": "+31612345678"}), external_ids=sms)
        call = pb_grpc.TrengoSidecarStub(channel).Identify.future(request, timeout=10)
        wait_for(lambda: unanswered(control, "/api/v2/contacts"), "the search to reach Trengo")
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=5) == 0, process.output()
        assert unanswered(control, "/api/v2/contacts")  # it exited after the grace, not after Trengo
        with pytest.raises(grpc.RpcError) as caught:
            call.result()
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "SIDECAR_SHUTTING_DOWN", f
    assert f.retry_delay is not None and f.retry_delay > 0, f  # nothing was written: retrying is safe
    assert not control.requests(method="POST") and control.contacts() == []
    assert_clean_log(process.output())
    assert "reason=SIDECAR_SHUTTING_DOWN" in process.output()  # the call's own log line


@pytest.mark.parametrize("written", ["at once", "after the answer's delay"])
def test_a_write_cut_off_by_the_grace_is_an_unknown_outcome_not_a_retryable_cancel(
    spawn, control, ann, written
):
    """Issue 10, item 1: a ticket POST awaiting its answer when the grace ran out.

    Trengo may have written the ticket at once and lost the answer, or be about to write it: from
    the sidecar's side the two look the same, and either way a retry could open a second ticket.
    """
    process = spawn(shutdownGraceSeconds=None, env={"SIDECAR_SHUTDOWN_GRACE_SECONDS": "2"})
    control.add_fault(method="POST", path=TICKETS, delay=6.0, after=written == "at once")
    with grpc.insecure_channel(process.address) as channel:
        call = pb_grpc.TrengoSidecarStub(channel).Track.future(track("m-cut"), timeout=20)
        wait_for(lambda: unanswered(control, TICKETS), "the ticket POST to reach Trengo")
        process.popen.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as caught:
            call.result()
        assert unanswered(control, TICKETS)  # cut off by the grace, not answered by Trengo
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert f.retry_delay is None, f  # a retry could open a second ticket
    assert "shut" in f.message and "POST /tickets" in f.message, f
    assert process.popen.wait(timeout=5) == 0, process.output()
    wait_for(lambda: not unanswered(control, TICKETS), "Trengo to finish the POST", timeout=10)
    assert len(control.tickets()) == 1  # Trengo's one ticket, and the caller was told not to resend
    assert_clean_log(process.output())
    assert "reason=TRENGO_OUTCOME_UNKNOWN" in process.output()


def assert_clean_log(output: str) -> None:
    """No traceback, and no grpc complaint about a handler it had to cancel."""
    assert "Traceback" not in output and "_handle_exceptions" not in output, output
    assert "code=CANCELLED" not in output, output


def test_a_new_call_during_the_drain_is_refused_as_shutting_down(spawn, control, ann):
    metrics = free_port()  # the refusal is counted and logged like any call (issue 10, item 12)
    process = spawn(shutdownGraceSeconds=5, metricsListen=f"127.0.0.1:{metrics}", logFormat="json")
    control.add_fault(method="POST", path=TICKETS, delay=2.0)
    with grpc.insecure_channel(process.address) as channel:
        stub = pb_grpc.TrengoSidecarStub(channel)
        call = stub.Track.future(track(), timeout=10)
        wait_for(lambda: unanswered(control, TICKETS), "the ticket write to reach Trengo")
        process.popen.send_signal(signal.SIGTERM)
        wait_for(lambda: process.health() != SERVING, "the drain to start", timeout=5)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Identify(pb.IdentifyRequest(traits=struct({"email": "late@example.com"})), timeout=5)
        f = failure(caught.value)
        assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "SIDECAR_SHUTTING_DOWN", f
        assert f.retry_delay is not None
        scraped = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5, trust_env=False).text
        assert call.result().ticket_id > 0  # the call in flight still finished
    assert process.popen.wait(timeout=5) == 0, process.output()
    assert [c["identifier"] for c in control.contacts()] == [
        "ann@example.com"
    ]  # nothing from the refused call
    assert 'trengo_sidecar_rpcs_total{code="UNAVAILABLE",method="Identify"} 1.0' in scraped, scraped
    lines = [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]
    refused = [line for line in lines if line.get("reason") == "SIDECAR_SHUTTING_DOWN"]
    assert [(line["rpc"], line["code"]) for line in refused] == [("Identify", "UNAVAILABLE")], lines


def test_the_unknown_outcome_of_a_cut_off_write_is_kept_under_its_message_id(make_sidecar, control, ann):
    """The answer a cut-off write got is what its message_id answers from then on: no second ticket.

    In-process, because the memory it is kept in ends with the process (a persistent store keeps it
    across the restart); what is checked is that the cut-off outcome was stored, not dropped."""
    thread = make_sidecar()
    sidecar = thread.sidecar
    control.add_fault(method="POST", path=TICKETS, delay=5.0, after=True)
    channel, stub = thread.stub()
    with channel:
        call = stub.Track.future(track("m-kept"), timeout=20)
        wait_for(lambda: len(control.tickets()) == 1, "the ticket to be written")
        thread.stop()  # grace 0.5 s: the answer is 5 s away
        with pytest.raises(grpc.RpcError) as caught:
            call.result()
    assert failure(caught.value).reason == "TRENGO_OUTCOME_UNKNOWN"
    replay = sidecar.delivery.deliver(events.from_track(track("m-kept")), Deadline.after(5))
    with pytest.raises(OutcomeUnknown) as again:
        asyncio.run(replay)
    assert again.value.reason == "TRENGO_OUTCOME_UNKNOWN" and again.value.retry_after is None
    assert len(control.requests(method="POST")) == 1 and len(control.tickets()) == 1


def test_a_deliver_stream_open_at_the_end_of_the_grace_answers_its_events_then_ends(spawn, control, ann):
    process = spawn(shutdownGraceSeconds=None, env={"SIDECAR_SHUTDOWN_GRACE_SECONDS": "1"})
    control.add_fault(method="POST", path=TICKETS, delay=6.0, after=True)
    sent: queue.Queue[pb.DeliverRequest | None] = queue.Queue()
    sent.put(pb.DeliverRequest(id="t1", track=track("m-stream")))
    with grpc.insecure_channel(process.address) as channel:
        answers = pb_grpc.TrengoSidecarStub(channel).Deliver(iter(sent.get, None), timeout=20)
        wait_for(lambda: len(control.tickets()) == 1, "the ticket to be written")
        process.popen.send_signal(signal.SIGTERM)  # the stream stays open: the caller sends no end
        first = next(answers)
        with pytest.raises(grpc.RpcError) as caught:
            next(answers)
        sent.put(None)
    assert first.id == "t1" and first.error.reason == "TRENGO_OUTCOME_UNKNOWN", first
    assert first.error.retry_after_seconds == 0
    f = failure(caught.value)
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "SIDECAR_SHUTTING_DOWN", f
    assert process.popen.wait(timeout=5) == 0, process.output()
    assert len(control.tickets()) == 1
    assert_clean_log(process.output())


def test_a_health_watch_open_at_the_end_of_the_grace_ends_without_a_traceback(spawn, control, ann):
    process = spawn(shutdownGraceSeconds=None, env={"SIDECAR_SHUTDOWN_GRACE_SECONDS": "1"})
    control.add_fault(method="POST", path=TICKETS, delay=6.0, after=True)
    with grpc.insecure_channel(process.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=20)
        assert next(watch).status == SERVING
        call = pb_grpc.TrengoSidecarStub(channel).Track.future(track(), timeout=20)
        wait_for(lambda: len(control.tickets()) == 1, "the ticket to be written")
        process.popen.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as ended:
            next(watch)
        with pytest.raises(grpc.RpcError) as cut:
            call.result()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure(cut.value).reason == "TRENGO_OUTCOME_UNKNOWN"
    assert process.popen.wait(timeout=5) == 0, process.output()
    assert_clean_log(process.output())

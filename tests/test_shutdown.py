"""Shutdown: the real CLI (``python -m sidecar --config ...``) in a subprocess, SIGTERM with a call in flight.

The call in flight is held by a simulator ``delay`` fault, so "in flight" is a fact the simulator
records (a request it has not answered yet), not a guess about timing. On SIGTERM the sidecar turns
health NOT_SERVING first, lets the call finish within ``shutdownGraceSeconds``, and exits 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.simulator import SimulatorControl, SimulatorThread
from tests.grpc_helpers import failure
from tests.harness import EMAIL_CHANNEL, SMS_CHANNEL, TEMPLATES, TOKEN, cli_env, free_port, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
TICKETS = "/api/v2/tickets"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def track() -> pb.TrackRequest:
    return pb.TrackRequest(event="Checked Out", context=struct({"traits": {"email": "ann@example.com"}}))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    ends = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < ends, f"timed out waiting for {what}"
        time.sleep(0.01)


def unanswered(control: SimulatorControl, path: str) -> bool:
    """Whether the simulator holds a request to ``path`` it has not answered yet."""
    return any(r["status"] is None for r in control.requests(path_prefix=path))


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    address: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> int:
        """A Check on a new connection: the status, or -1 when the sidecar does not answer at all."""
        try:
            with grpc.insecure_channel(self.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
        except grpc.RpcError:
            return -1


@pytest.fixture
def spawn(
    sim: SimulatorThread, control: SimulatorControl, tmp_path: Path
) -> Iterator[Callable[..., Process]]:
    """spawn(**config): the sidecar CLI on a free port against the session simulator, ready to call."""
    started: list[Process] = []

    def spawn(**overrides: Any) -> Process:
        address = f"127.0.0.1:{free_port()}"
        config = tmp_path / f"sidecar-{len(started)}.yaml"
        raw = {
            "apiToken": TOKEN, "baseUrl": sim.base_url, "channelId": EMAIL_CHANNEL, "listen": address,
            "eventTemplateMap": TEMPLATES, "rateLimitPerMinute": 0, "shutdownGraceSeconds": 5, **overrides,
        }  # fmt: skip
        config.write_text(yaml.safe_dump(raw))
        log = tmp_path / f"sidecar-{len(started)}.log"
        with log.open("wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "--config", str(config)],
                cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        process = Process(popen, address, log)
        started.append(process)
        wait_for(lambda: popen.poll() is not None or process.health() == SERVING, "the sidecar to serve", 20)
        assert popen.poll() is None, f"the sidecar exited {popen.returncode}: {process.output()}"
        return process

    yield spawn
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()


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


def test_a_call_longer_than_the_grace_is_cut_off_and_the_process_still_exits_0(spawn, control):
    process = spawn(shutdownGraceSeconds=0.3)
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
    assert caught.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert not control.requests(method="POST") and control.contacts() == []


def test_a_new_call_during_the_drain_is_refused_as_shutting_down(spawn, control, ann):
    process = spawn(shutdownGraceSeconds=5)
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
        assert call.result().ticket_id > 0  # the call in flight still finished
    assert process.popen.wait(timeout=5) == 0, process.output()
    assert [c["identifier"] for c in control.contacts()] == [
        "ann@example.com"
    ]  # nothing from the refused call

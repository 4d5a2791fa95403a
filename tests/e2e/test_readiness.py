"""Readiness that catches a bad token (issue 10, item 4), with the real CLI against the simulator.

At start and every few minutes the sidecar lists Trengo's channels. A refused token or a wrong
baseUrl turns health NOT_SERVING (a rollout with a bad Secret stalls); an outage leaves it SERVING
(a native sidecar's readiness is the pod's). ``--check-trengo`` is the same check, once.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.api.app import SERVICE
from tests.support.grpc_helpers import failure
from tests.support.harness import EMAIL_CHANNEL, SMS_CHANNEL, TOKEN, free_port, struct
from tests.support.metrics import scrape, value
from tests.support.processes import NOT_SERVING, SERVING, check_trengo, wait_for
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

CHANNELS = "/api/v2/channels"
WRONG = "wrong-token-5be1"


def identify() -> pb.IdentifyRequest:
    return pb.IdentifyRequest(traits=struct({"email": "ann@example.com"}))


def both(process: Any) -> tuple[int, int]:
    """The status of the whole server and of the TrengoSidecar service: always the same."""
    return process.health(""), process.health(SERVICE)


# --- at start, the real CLI ----------------------------------------------------------------------------


def test_a_refused_token_turns_health_not_serving_and_says_check_api_token(spawn, control):
    metrics = free_port()
    process = spawn(env={"TRENGO_API_TOKEN": WRONG}, serving=False, metricsListen=f"127.0.0.1:{metrics}")
    # Health answers NOT_SERVING while starting too: wait for the check's own verdict before reading it.
    wait_for(lambda: "Trengo check failed" in process.output(), "the check's error line")
    assert both(process) == (NOT_SERVING, NOT_SERVING)
    output = process.output()
    assert "check apiToken" in output and "NOT_SERVING" in output and WRONG not in output, output
    assert [r["path"] for r in control.requests()] == [CHANNELS]  # the one check call
    _, samples = scrape(f"http://127.0.0.1:{metrics}/metrics")
    assert value(samples, "trengo_sidecar_trengo_check", result="unauthorized") == 1
    assert value(samples, "trengo_sidecar_trengo_check", result="ok") == 0
    assert value(samples, "trengo_sidecar_trengo_check_timestamp_seconds") > time.time() - 60
    with grpc.insecure_channel(process.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.TrengoSidecarStub(channel).Identify(identify(), timeout=5)  # still answers, with the reason
    assert failure(caught.value).reason == "TRENGO_UNAUTHORIZED"


def test_a_base_url_without_api_v2_turns_health_not_serving_and_says_so(spawn, sim, control):
    root = sim.base_url.removesuffix("/api/v2")
    process = spawn(serving=False, baseUrl=root)
    assert both(process) == (NOT_SERVING, NOT_SERVING)
    output = process.output()
    assert "404" in output and "check baseUrl" in output and "ends in /api/v2" in output, output


def test_a_trengo_that_cannot_be_reached_is_an_outage_and_health_stays_serving(spawn, control):
    process = spawn(baseUrl=f"http://127.0.0.1:{free_port()}/api/v2", maxAttempts=2, backoffBaseSeconds=0.01)
    assert both(process) == (SERVING, SERVING)
    wait_for(lambda: "Trengo check failed" in process.output(), "the check's log line")
    assert "outage" in process.output() and "stays SERVING" in process.output()


def test_a_trengo_answering_503_is_an_outage_and_health_stays_serving(spawn, control):
    control.add_fault(method="GET", path=CHANNELS, status=503, count=100)
    process = spawn(maxAttempts=2, backoffBaseSeconds=0.01)
    assert both(process) == (SERVING, SERVING)
    wait_for(lambda: "Trengo check failed" in process.output(), "the check's log line")
    assert "503" in process.output()


def test_a_working_token_is_serving_and_its_channel_list_fills_the_cache(spawn, control, ann):
    process = spawn()
    assert both(process) == (SERVING, SERVING)
    assert "Trengo check passed" in process.output()
    with grpc.insecure_channel(process.address) as channel:
        pb_grpc.TrengoSidecarStub(channel).Identify(identify(), timeout=5)
    assert [r["path"] for r in control.requests()].count(CHANNELS) == 1  # the check's, reused


def test_health_is_not_serving_until_the_first_check_has_answered(spawn, control):
    control.add_fault(method="GET", path=CHANNELS, delay=4.0)  # under the 5 s start-up waits for it

    def checking() -> bool:
        return any(r["status"] is None for r in control.requests(path_prefix=CHANNELS))

    process = spawn(serving=False)
    wait_for(checking, "the first check to reach Trengo")
    status = both(process)
    assert checking(), "the check ended before health was asked: too slow a machine to tell"
    assert status == (NOT_SERVING, NOT_SERVING)
    wait_for(lambda: both(process) == (SERVING, SERVING), "the first check to pass")


def test_a_channel_of_the_wrong_kind_takes_the_service_out_with_the_reason(spawn, control):
    """channelIdentifier email on an SMS channel: every Identify would fail CHANNEL_KIND_MISMATCH."""
    metrics = free_port()
    process = spawn(serving=False, channelId=SMS_CHANNEL, channelIdentifier="email",
                    metricsListen=f"127.0.0.1:{metrics}")  # fmt: skip
    wait_for(lambda: process.health(SERVICE) == NOT_SERVING and "Trengo check failed" in process.output(),
             "the check to judge the channel")  # fmt: skip
    assert process.health("") == SERVING  # the pod's probe: calls that need no channel still work
    _, samples = scrape(f"http://127.0.0.1:{metrics}/metrics")
    assert value(samples, "trengo_sidecar_not_serving", reason="channel_kind_mismatch") == 1
    assert value(samples, "trengo_sidecar_not_serving", reason="trengo_misconfigured") == 0
    assert value(samples, "trengo_sidecar_trengo_check", result="channel_kind_mismatch") == 1
    output = process.output()
    assert "CHANNEL_KIND_MISMATCH" in output and f"channel {SMS_CHANNEL} is a SMS channel" in output, output
    assert "set channelIdentifier (TRENGO_CHANNEL_IDENTIFIER) to phone" in output, output
    with grpc.insecure_channel(process.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.TrengoSidecarStub(channel).Identify(identify(), timeout=5)
    assert failure(caught.value).reason == "CHANNEL_KIND_MISMATCH"
    assert [r for r in control.requests() if r["method"] != "GET"] == []  # nothing written


# --- every few minutes (in-process, with a short interval) ----------------------------------------------


def test_the_check_repeats_and_health_follows_the_token(make_sidecar, control):
    thread = make_sidecar()
    thread.call(thread.sidecar.readiness.start(interval=0.1, recheck=0.1))
    with grpc.insecure_channel(thread.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def status(service: str = "") -> int:
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)

        assert (status(), status(SERVICE)) == (SERVING, SERVING)
        control.configure(tokens=["rotated"])  # the token was revoked in Trengo
        wait_for(lambda: status() == NOT_SERVING, "health to notice the revoked token")
        assert status(SERVICE) == NOT_SERVING
        control.configure(tokens=[TOKEN])
        wait_for(lambda: status() == SERVING, "health to notice the token works again")
        assert status(SERVICE) == SERVING


# --- trengo-sidecar --check-trengo ------------------------------------------------------------------------




def test_check_trengo_exits_0_when_the_token_works(tmp_path, sim, control):
    done = check_trengo(tmp_path, sim.base_url)
    assert done.returncode == 0, done
    assert f"channel {EMAIL_CHANNEL} is a EMAIL channel" in done.stdout, done
    assert [r["path"] for r in control.requests()] == [CHANNELS]


@pytest.mark.parametrize(
    ("overrides", "code", "says"),
    [
        ({"apiToken": WRONG}, 1, "check apiToken"),
        ({"baseUrl": "ROOT"}, 1, "ends in /api/v2"),
        ({"channelId": 999}, 1, "channelId 999 is not among"),
        ({"baseUrl": "CLOSED"}, 3, "outage"),
        ({"channelId": SMS_CHANNEL, "channelIdentifier": "email"}, 1,
         f"channel {SMS_CHANNEL} is a SMS channel, which identifies contacts by phone, but channelIdentifier "
         f"is email: set channelIdentifier (TRENGO_CHANNEL_IDENTIFIER) to phone, or channelId "
         f"(TRENGO_CHANNEL_ID) to one of its email channels (e.g. {EMAIL_CHANNEL})\n"),
        ({"channelId": SMS_CHANNEL, "channelIdentifier": "phone"}, 0, ""),
        ({"channelId": SMS_CHANNEL, "channelIdentifier": "auto"}, 0, ""),
    ],
)
def test_check_trengo_exits_non_zero_with_the_reason_or_0_for_a_fitting_channel(
    tmp_path, sim, control, overrides, code, says
):
    closed = f"http://127.0.0.1:{free_port()}/api/v2"
    urls = {"ROOT": sim.base_url.removesuffix("/api/v2"), "CLOSED": closed}
    base = urls.get(overrides.pop("baseUrl", ""), sim.base_url)
    done = check_trengo(tmp_path, base, **overrides)
    assert done.returncode == code, done
    assert says in done.stderr and "Traceback" not in done.stderr, done
    if code:  # the reason and its fix in one line (other lines are start-up warnings)
        lines = done.stderr.splitlines()
        verdicts = [line for line in lines if line.startswith("trengo-sidecar: --check-trengo:")]
        assert len(verdicts) == 1 and says.strip() in verdicts[0], done
    assert WRONG not in done.stderr + done.stdout and TOKEN not in done.stderr + done.stdout

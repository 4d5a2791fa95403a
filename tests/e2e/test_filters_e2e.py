"""Filtered events, end to end: the real sidecar and simulator, every RPC that carries an event.

A filtered event is answered OK with ACTION_FILTERED and its reason, and makes no Trengo call at
all: each test asserts on the simulator's recorded requests, and then delivers an allowed event to
show the same setup does reach Trengo.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from trengo_sidecar_client import Action, TrengoSidecarClient

from sidecar.observe.logs import JsonFormatter
from sidecar.observe.metrics import start_metrics
from tests.support.consent import CONSENT, DENIED, REASON, context
from tests.support.harness import EMAIL_CHANNEL, TOKEN, cli_env, free_port, struct
from tests.support.logs import Lines
from tests.support.metrics import scrape, value
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {"deniedConsentIds": ["C0002"], "provider": "oneTrust", "resolutionStrategy": "and"}


@pytest.fixture
def consent_stub(make_sidecar: Any) -> Any:
    channel = grpc.insecure_channel(make_sidecar(**CONSENT).address)
    yield pb_grpc.TrengoSidecarStub(channel)
    channel.close()




def send_event(kind: str = "identify", consent: Any = None, **extra: Any) -> pb.SendEventRequest:
    traits = {"email": "ann@example.com"}
    event: dict[str, Any] = {"type": kind, "userId": "u1", "context": {"traits": traits}}
    if kind == "track":
        event["event"] = "Product Purchased"
    if consent is not None:
        event["context"]["consentManagement"] = consent
    return pb.SendEventRequest(event=struct({**event, **extra}))


def assert_filtered(result: pb.DeliveryResult, reason: str) -> None:
    assert result.action == pb.ACTION_FILTERED and result.filtered_reason == reason
    assert not result.requests and result.contact_id == 0 and result.ticket_id == 0


def test_identify_with_denied_consent_makes_no_trengo_call(consent_stub, control):
    request = pb.IdentifyRequest(user_id="u1", context=context(DENIED), message_id="m-1")
    result = consent_stub.Identify(request)
    assert_filtered(result, REASON)
    assert result.message_id == "m-1"
    assert control.requests() == [] and control.contacts() == []

    allowed = consent_stub.Identify(pb.IdentifyRequest(user_id="u1", context=context(ALLOWED)))
    assert allowed.action == pb.ACTION_CREATE_CONTACT and allowed.filtered_reason == ""
    assert [c["identifier"] for c in control.contacts()] == ["ann@example.com"]


def test_typed_track_with_denied_consent_makes_no_trengo_call(consent_stub, control, ann):
    request = pb.TrackRequest(user_id="u1", event="Product Purchased", context=context(DENIED))
    assert_filtered(consent_stub.Track(request), REASON)
    assert control.requests() == [] and control.tickets() == []

    request = pb.TrackRequest(user_id="u1", event="Product Purchased", context=context(ALLOWED))
    assert consent_stub.Track(request).action == pb.ACTION_CREATE_TICKET
    assert len(control.tickets()) == 1


def test_an_unmapped_track_with_denied_consent_is_filtered_not_refused(consent_stub, control):
    # RudderStack drops it before its destination would refuse the event name
    request = pb.TrackRequest(event="Page Viewed", context=context(DENIED))
    assert_filtered(consent_stub.Track(request), REASON)
    assert control.requests() == []


def test_send_event_with_denied_consent_makes_no_trengo_call(consent_stub, control, ann):
    ketch = {"provider": "ketch", "resolutionStrategy": "or", "deniedConsentIds": ["b", "a"]}
    assert_filtered(consent_stub.SendEvent(send_event("track", ketch)), "consent denied: a, b")
    assert control.requests() == []

    one_of_two = {**ketch, "deniedConsentIds": ["b"]}  # "or": one consent of the two still given
    assert consent_stub.SendEvent(send_event("track", one_of_two)).action == pb.ACTION_CREATE_TICKET
    assert len(control.tickets()) == 1


@pytest.mark.parametrize(
    ("integrations", "reason"),
    [
        ({"All": False}, "integrations.All is false"),
        ({"All": True, "Trengo": False}, "integrations.Trengo is false"),
        ({"All": "true"}, "integrations.All is not a boolean"),
        (None, "integrations is null"),
    ],
)
def test_send_event_whose_integrations_exclude_trengo_makes_no_call(stub, control, integrations, reason):
    assert_filtered(stub.SendEvent(send_event(integrations=integrations)), reason)
    assert control.requests() == []
    allowed = stub.SendEvent(send_event(integrations={"All": False, "Trengo": {}}))
    assert allowed.action == pb.ACTION_CREATE_CONTACT
    assert len(control.contacts()) == 1


def test_a_filtered_dry_run_says_so_and_lists_nothing(consent_stub, control):
    request = pb.IdentifyRequest(context=context(DENIED), dry_run=True)
    result = consent_stub.Identify(request)
    assert_filtered(result, REASON)
    assert result.dry_run
    assert control.requests() == []


def test_the_deliver_stream_answers_filtered_events_in_stream(consent_stub, control, ann):
    requests = [
        pb.DeliverRequest(id="i", identify=pb.IdentifyRequest(user_id="u1", context=context(DENIED))),
        pb.DeliverRequest(
            id="t", track=pb.TrackRequest(user_id="u1", event="Checked Out", context=context(DENIED))
        ),
        pb.DeliverRequest(id="s", send_event=send_event(integrations={"Trengo": False})),
    ]
    answers = {a.id: a for a in consent_stub.Deliver(iter(requests))}
    assert set(answers) == {"i", "t", "s"}
    for id_, reason in (("i", REASON), ("t", REASON), ("s", "integrations.Trengo is false")):
        assert answers[id_].WhichOneof("outcome") == "result", answers[id_]
        assert_filtered(answers[id_].result, reason)
    assert control.requests() == []

    allowed = pb.DeliverRequest(
        id="ok", track=pb.TrackRequest(user_id="u1", event="Checked Out", context=context(ALLOWED))
    )
    [answer] = consent_stub.Deliver(iter([allowed]))
    assert answer.result.action == pb.ACTION_CREATE_TICKET
    assert len(control.tickets()) == 1


def test_filtered_events_are_counted_by_rule(make_sidecar, control):
    thread = make_sidecar(**CONSENT)
    server = start_metrics("127.0.0.1:0", thread.sidecar)
    channel = grpc.insecure_channel(thread.address)
    stub = pb_grpc.TrengoSidecarStub(channel)
    try:
        _, before = scrape(server.url)
        assert value(before, "trengo_sidecar_filtered_total", rule="consent") == 0
        assert ("trengo_sidecar_filtered_total", frozenset({("rule", "integrations")})) in before
        stub.Identify(pb.IdentifyRequest(context=context(DENIED)))
        stub.SendEvent(send_event(consent=DENIED))
        stub.SendEvent(send_event(integrations={"All": False}))
        _, samples = scrape(server.url)
    finally:
        channel.close()
        server.close()
    assert value(samples, "trengo_sidecar_filtered_total", rule="consent") == 2
    assert value(samples, "trengo_sidecar_filtered_total", rule="integrations") == 1
    assert value(samples, "trengo_sidecar_rpcs_total", method="SendEvent", code="OK") == 2
    assert control.requests() == []


def test_the_log_line_names_the_filtered_reason(consent_stub, control):
    handler = Lines(JsonFormatter())
    logger = logging.getLogger("sidecar")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        consent_stub.Identify(pb.IdentifyRequest(context=context(DENIED)))
        deadline = time.monotonic() + 5
        while not any('"handled"' in line for line in handler.lines) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        logger.removeHandler(handler)
    [line] = [json.loads(x) for x in handler.lines if '"handled"' in x]
    assert line["code"] == "OK" and line["action"] == "filtered" and line["filtered_reason"] == REASON
    assert line["trengo_calls"] == 0


def test_the_python_client_reports_filtered(make_sidecar, control):
    with TrengoSidecarClient(make_sidecar(**CONSENT).address, timeout=10) as client:
        result = client.identify(email="ann@example.com", context={"consentManagement": DENIED})
    assert result.action is Action.FILTERED and result.filtered_reason == REASON
    assert result.requests == () and control.requests() == []


def test_a_malformed_trengo_external_id_is_refused_before_any_call(stub, control):
    malformed = [{"type": "trengoContactId"}]
    event = send_event(context={"traits": {"email": "ann@example.com"}, "externalId": malformed})
    with pytest.raises(grpc.RpcError) as caught:
        stub.SendEvent(event)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.context.externalId[0].id" in caught.value.details()
    assert control.requests() == []


def test_the_email_fallback_reaches_trengo(stub, control):
    ids = [{"type": "trengoChannelId", "id": str(EMAIL_CHANNEL)}, {"type": "crm", "id": "ext@example.com"}]
    result = stub.SendEvent(send_event(context={"externalId": ids}))
    assert result.action == pb.ACTION_CREATE_CONTACT
    [create] = control.requests(method="POST")
    assert create["body"]["identifier"] == "ext@example.com"


def test_the_env_var_form_filters_in_a_real_sidecar_process(sim, control):
    """The CLI, configured only from the environment (JSON values), filters as the file form does."""
    port = free_port()
    env = cli_env(
        TRENGO_API_TOKEN=TOKEN,
        TRENGO_CHANNEL_ID=str(EMAIL_CHANNEL),
        TRENGO_BASE_URL=sim.base_url,
        TRENGO_RATE_LIMIT_PER_MINUTE="0",
        SIDECAR_LISTEN=f"127.0.0.1:{port}",
        TRENGO_ONE_TRUST_COOKIE_CATEGORIES=json.dumps(CONSENT["oneTrustCookieCategories"]),
        TRENGO_CONSENT_MANAGEMENT=json.dumps(CONSENT["consentManagement"]),
        TRENGO_KETCH_CONSENT_PURPOSES='[{"purpose": "p1"}]',
    )
    check = subprocess.run([sys.executable, "-m", "sidecar", "--check-config"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    printed = yaml.safe_load(check.stdout)  # the file's form, as given (issue 10: --check-config)
    assert printed["oneTrustCookieCategories"] == CONSENT["oneTrustCookieCategories"]
    assert printed["ketchConsentPurposes"] == [{"purpose": "p1"}]
    assert "oneTrustCookieCategories:  # env TRENGO_ONE_TRUST_COOKIE_CATEGORIES" in check.stdout
    process = subprocess.Popen([sys.executable, "-m", "sidecar"], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = pb_grpc.TrengoSidecarStub(channel)
        assert_filtered(stub.Identify(pb.IdentifyRequest(context=context(DENIED)), timeout=10), REASON)
        no_provider = {"deniedConsentIds": ["p1"]}  # oneTrust (C0004 not denied) decides: delivered
        delivered = stub.Identify(pb.IdentifyRequest(context=context(no_provider)), timeout=10)
        assert delivered.action == pb.ACTION_CREATE_CONTACT
        ketch = {"provider": "ketch", "deniedConsentIds": ["p1"]}  # the entry wins over ketchConsentPurposes
        answer = stub.Identify(pb.IdentifyRequest(context=context(ketch)), timeout=10)
        assert answer.action == pb.ACTION_NONE
    finally:
        channel.close()
        process.terminate()
        process.wait(timeout=20)
    assert [c["identifier"] for c in control.contacts()] == ["ann@example.com"]

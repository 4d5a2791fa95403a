"""Fault injection: the real sidecar against the simulator over real sockets, Trengo misbehaving on purpose.

Each test scripts a fault in the simulator (5xx bursts, 429s, dropped connections, slow or malformed
answers, contacts deleted behind the sidecar's back) and asserts on what the simulator recorded: the
requests that reached it, and the contacts and tickets it holds. The sidecar's own answer is checked
too, but never taken as proof that something was or was not written.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest

from sidecar.deadline import Deadline
from sidecar.plan.transform import create_ticket
from sidecar.simulator import SimulatorControl
from sidecar.trengo_api import ratelimit
from sidecar.trengo_api.answers import TrengoError
from sidecar.trengo_api.client import CallRecord
from sidecar.trengo_api.retry import MAX_RETRY_AFTER_SECONDS, RetryPolicy, retry_after
from tests.support.grpc_helpers import Failure, failure
from tests.support.harness import EMAIL_CHANNEL, SMS_CHANNEL, struct
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

API = "/api/v2"
TICKETS = f"{API}/tickets"
SEARCH = f"{API}/contacts"
CREATE = f"{API}/channels/{EMAIL_CHANNEL}/contacts"
EMAIL = "ann@example.com"
PHONE = "+31612345678"
ON_SMS = [pb.ExternalId(type="trengoChannelId", id=str(SMS_CHANNEL))]

Stub = pb_grpc.TrengoSidecarStub


# --- helpers -------------------------------------------------------------------------------------


def identify(email: str = EMAIL, message_id: str = "", **traits: Any) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(user_id="u1", message_id=message_id, traits=struct({"email": email, **traits}))


def phone_identify(phone: str = PHONE, **traits: Any) -> pb.IdentifyRequest:
    """An identify on the SMS channel: a number the sidecar does not know is searched for first (on the
    e-mail channel a new address is created at once), so these exercise the search."""
    return pb.IdentifyRequest(user_id="u1", traits=struct({"phone": phone, **traits}), external_ids=ON_SMS)


def track(email: str = EMAIL, message_id: str = "", event: str = "Checked Out") -> pb.TrackRequest:
    return pb.TrackRequest(
        user_id="u1", event=event, message_id=message_id, context=struct({"traits": {"email": email}})
    )


def calls(control: SimulatorControl) -> list[tuple[str, str, int | None]]:
    """(method, path below /api/v2, status) of every request the simulator received, in order."""
    return [(r["method"], r["path"].removeprefix(API), r["status"]) for r in control.requests()]


def statuses(control: SimulatorControl, path: str, method: str) -> list[int | None]:
    return [r["status"] for r in control.requests(path_prefix=path, method=method)]


def fails(call: Callable[[], Any]) -> Failure:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return failure(caught.value)


def settle(control: SimulatorControl, timeout: float = 5.0) -> None:
    """Wait until the simulator has answered (or dropped) every request it received.

    A request held by a ``delay`` fault is still running after the sidecar gave up on it; its write
    lands later. Tests that use delays wait for it, so they see the final state and the next test's
    reset is not undone by a late write.
    """
    ends = time.monotonic() + timeout
    while any(r["status"] is None for r in control.requests()):
        assert time.monotonic() < ends, "the simulator never finished a delayed request"
        time.sleep(0.02)


def gap_after(control: SimulatorControl, path: str, method: str) -> float:
    """Seconds between the first and second recorded request to ``path``, by the simulator's clock."""
    first, second = control.requests(path_prefix=path, method=method)[:2]
    return float(second["at"] - first["at"])


@pytest.fixture
def piet(control: SimulatorControl) -> dict[str, Any]:
    """Piet's contact on the SMS channel, already in the simulator."""
    return control.add_contact(name="Piet", identifier=PHONE, channel_id=SMS_CHANNEL)


@pytest.fixture
def start(make_sidecar: Callable[..., Any]) -> Iterator[Callable[..., Stub]]:
    """start(**config) -> a stub connected to a fresh sidecar with that config."""
    channels: list[grpc.Channel] = []

    def start(**overrides: Any) -> Stub:
        channel, stub = make_sidecar(**overrides).stub()
        channels.append(channel)
        return stub

    yield start
    for channel in channels:
        channel.close()


# --- retries: 5xx, 408, connection errors ---------------------------------------------------------


def test_a_burst_of_503s_then_success_opens_exactly_one_ticket(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, status=503, count=3)
    result = stub.Track(track(), timeout=5)
    assert statuses(control, TICKETS, "POST") == [503, 503, 503, 201]
    [ticket] = control.tickets()
    assert ticket["id"] == result.ticket_id and ticket["contact_id"] == ann["id"]
    assert result.requests[-1].attempts == 4 and result.requests[-1].status_code == 201


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_on_reads_and_updates(stub, control, piet, status):
    control.add_fault(method="GET", path=SEARCH, status=status)
    control.add_fault(method="PUT", status=status)
    result = stub.Identify(phone_identify(name="Piet Lee"), timeout=5)
    assert statuses(control, SEARCH, "GET") == [status, 200]
    assert statuses(control, f"{API}/contacts/", "PUT") == [status, 200]
    assert result.action == pb.ACTION_UPDATE_CONTACT
    assert [(c["id"], c["name"]) for c in control.contacts()] == [(piet["id"], "Piet Lee")]


@pytest.mark.parametrize("status", [408, 500, 503])
def test_statuses_that_say_nothing_was_written_are_retried_on_creates(stub, control, status):
    control.add_fault(method="POST", path=CREATE, status=status)
    control.add_fault(method="POST", path=TICKETS, status=status)
    contact = stub.Identify(identify(name="Ann"), timeout=5)
    ticket = stub.Track(track(), timeout=5)
    assert statuses(control, CREATE, "POST") == [status, 201]
    assert statuses(control, TICKETS, "POST") == [status, 201]
    assert [c["id"] for c in control.contacts()] == [contact.contact_id]
    assert [t["id"] for t in control.tickets()] == [ticket.ticket_id]


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateways_502_or_504_to_a_ticket_is_outcome_unknown_and_never_resent(stub, control, ann, status):
    """A gateway's 502/504 is a lost answer: Trengo may have opened the ticket behind it."""
    headers = {"Retry-After": "1"}  # a hint to come back changes nothing: a resend could write twice
    control.add_fault(method="POST", path=TICKETS, status=status, headers=headers, after=True)
    f = fails(lambda: stub.Track(track(message_id="m-gateway"), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert f.retry_delay is None
    again = fails(lambda: stub.Track(track(message_id="m-gateway"), timeout=5))
    assert (again.code, again.reason, again.retry_delay) == (f.code, f.reason, None)
    assert statuses(control, TICKETS, "POST") == [status]
    assert len(control.tickets()) == 1  # written by Trengo once, never a second time


@pytest.mark.parametrize("written", [True, False], ids=["written", "not-written"])
@pytest.mark.parametrize("status", [502, 504])
def test_a_gateways_502_or_504_to_a_contact_create_is_reconciled_by_a_search(stub, control, status, written):
    control.add_fault(method="POST", path=CREATE, status=status, after=written)
    result = stub.Identify(identify(name="Ann"), timeout=5)
    [contact] = control.contacts()
    assert result.contact_id == contact["id"] and result.action == pb.ACTION_CREATE_CONTACT
    # E-mail: the create comes first, and the only search asks whether it happened.
    assert statuses(control, SEARCH, "GET") == [200]
    assert statuses(control, CREATE, "POST") == ([status] if written else [status, 201])


def test_a_5xx_with_an_html_body_is_retried_like_any_5xx(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, status=503, body="<html><h1>503 Unavailable</h1></html>")
    control.add_fault(method="GET", path=SEARCH, status=502, body="<html><h1>502 Bad Gateway</h1></html>")
    result = stub.Track(track(), timeout=5)
    assert statuses(control, SEARCH, "GET") == [502, 200]
    assert statuses(control, TICKETS, "POST") == [503, 201]
    assert [t["id"] for t in control.tickets()] == [result.ticket_id]


@pytest.mark.parametrize("hint", ["0", "2"])
def test_a_5xx_retry_after_is_the_callers_retry_info_even_when_it_is_0(start, control, hint):
    stub = start(maxAttempts=3)
    control.add_fault(method="GET", path=SEARCH, status=503, headers={"Retry-After": hint}, count=-1)
    f = fails(lambda: stub.Identify(phone_identify(), timeout=1))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE", f
    assert f.retry_delay == float(hint)
    # Retry-After: 0 is retried at once up to maxAttempts; 2 s does not fit in the deadline.
    assert statuses(control, SEARCH, "GET") == [503] * (3 if hint == "0" else 1)
    assert not control.requests(method="POST")


def test_the_attempt_limit_bounds_retries(start, control):
    stub = start(maxAttempts=3)
    control.add_fault(method="GET", path=SEARCH, status=503, count=-1)
    f = fails(lambda: stub.Identify(phone_identify(), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE"
    assert f.retry_delay is not None
    assert statuses(control, SEARCH, "GET") == [503, 503, 503]
    assert not control.requests(method="POST") and control.contacts() == []


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_other_4xx_are_never_retried(stub, control, ann, status):
    control.add_fault(method="POST", path=TICKETS, status=status, count=-1)
    f = fails(lambda: stub.Track(track(), timeout=5))
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "TRENGO_REJECTED"
    assert f.retry_delay is None and str(status) in f.message
    assert statuses(control, TICKETS, "POST") == [status]
    assert control.tickets() == []


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_not_retried(stub, control, status):
    control.add_fault(method="GET", status=status, count=-1)
    f = fails(lambda: stub.Identify(identify(), timeout=5))
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "TRENGO_UNAUTHORIZED"
    assert [s for _, _, s in calls(control)] == [status]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (None, {"contact_id"}),  # the simulator's own 422, as Trengo words it
        (
            {"message": "no", "errors": {"subject": ["too long"], "channel_id": ["bad"]}},
            {"subject", "channel_id"},
        ),
        ({"message": "no", "errors": ["contact_id"]}, set()),
        ("contact_id is invalid", set()),
    ],
)
def test_a_rejection_names_the_fields_of_trengos_errors_object(make_sidecar, control, body, fields):
    sidecar = make_sidecar()
    if body is not None:
        control.add_fault(method="POST", path=TICKETS, status=422, body=body)
    records: list[CallRecord] = []
    call = create_ticket(123456, EMAIL_CHANNEL, None)
    with pytest.raises(TrengoError) as caught:
        sidecar.call(sidecar.sidecar.client.send(call, Deadline.after(5), records))
    assert caught.value.status == 422 and caught.value.fields == fields
    assert statuses(control, TICKETS, "POST") == [422] and control.tickets() == []


def test_trengos_own_422_on_an_unknown_contact_is_not_retried(stub, control):
    ext = [pb.ExternalId(type="trengoContactId", id="123456")]
    f = fails(lambda: stub.Track(pb.TrackRequest(event="Checked Out", external_ids=ext), timeout=5))
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "TRENGO_REJECTED"
    assert "contact" in f.message and "422" in f.message
    assert statuses(control, TICKETS, "POST") == [422]
    assert control.tickets() == []


# --- Trengo down: answered before the deadline, nothing written -------------------------------------


def test_trengo_answering_503_forever_is_unavailable_before_the_deadline(start, control, ann):
    stub = start(maxAttempts=1000, backoffBaseSeconds=0.05, backoffMaxSeconds=0.2)
    control.add_fault(status=503, count=-1)
    f = fails(lambda: stub.Track(track(), timeout=1.5))
    # Its own UNAVAILABLE, not the client's DEADLINE_EXCEEDED: the sidecar answered before the deadline.
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE", f
    assert f.retry_delay is not None and f.retry_delay >= 0
    assert len(control.requests()) > 1  # it did retry
    assert all(s == 503 for _, _, s in calls(control))
    assert control.tickets() == [] and len(control.contacts()) == 1


def test_trengo_failing_only_the_write_writes_nothing(start, control, ann):
    stub = start(maxAttempts=1000, backoffBaseSeconds=0.05, backoffMaxSeconds=0.2)
    control.add_fault(method="POST", path=TICKETS, status=503, count=-1)
    f = fails(lambda: stub.Track(track(), timeout=1.5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.retry_delay is not None, f
    assert len(statuses(control, TICKETS, "POST")) > 1
    assert set(statuses(control, TICKETS, "POST")) == {503}
    assert control.tickets() == []


@pytest.mark.parametrize("answer_seconds", [0.05, 0.15])
def test_trengo_slow_to_fail_a_write_is_unavailable_never_outcome_unknown(
    start, control, ann, answer_seconds
):
    """No write is sent with too little time left to hear its answer: that would turn a plain failure
    into an unknown outcome (and lock the message_id on it)."""
    stub = start(maxAttempts=1000, backoffBaseSeconds=0.05, backoffMaxSeconds=0.2)
    stub.Track(track(message_id="warm-up"), timeout=5)  # channels and contact cached: only writes now
    control.add_fault(method="POST", path=TICKETS, status=503, delay=answer_seconds, count=-1)
    for attempt in range(2):
        f = fails(lambda attempt=attempt: stub.Track(track(message_id=f"m-{attempt}"), timeout=1.0))
        assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE", f
        assert f.retry_delay is not None
    settle(control)
    assert set(statuses(control, TICKETS, "POST")[1:]) == {503}
    assert len(control.tickets()) == 1  # the warm-up's


def test_trengo_unreachable_is_retried_then_unavailable_before_the_deadline(make_sidecar, control):
    import socket

    with socket.socket() as closed:  # a port nobody listens on: every connect is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    sidecar = make_sidecar(
        baseUrl=f"http://127.0.0.1:{port}/api/v2", maxAttempts=1000, backoffBaseSeconds=0.02
    )
    channel, stub = sidecar.stub()
    with channel:
        f = fails(lambda: stub.Identify(identify(), timeout=1.0))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE", f
    assert "could not be reached" in f.message and f.retry_delay is not None
    assert control.requests() == []


# --- 429: Retry-After (seconds or HTTP date) and X-RateLimit-Reset ---------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda: {"Retry-After": "1"}, id="retry-after-seconds"),
        pytest.param(
            lambda: {"Retry-After": formatdate(time.time() + 2, usegmt=True)}, id="retry-after-date"
        ),
        pytest.param(lambda: {"X-RateLimit-Reset": str(math.ceil(time.time()) + 1)}, id="ratelimit-reset"),
    ],
)
def test_a_429_waits_as_told_then_opens_one_ticket(stub, control, ann, headers):
    control.add_fault(method="POST", path=TICKETS, status=429, headers=headers())
    result = stub.Track(track(), timeout=5)
    assert statuses(control, TICKETS, "POST") == [429, 201]
    # Every hint above asks for at least one more second (an HTTP date has whole seconds only).
    assert gap_after(control, TICKETS, "POST") >= 0.9
    assert [t["id"] for t in control.tickets()] == [result.ticket_id]


def test_a_429_asking_longer_than_the_deadline_is_resource_exhausted_at_once(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, status=429, headers={"Retry-After": "30"}, count=-1)
    f = fails(lambda: stub.Track(track(), timeout=2))
    assert f.code == grpc.StatusCode.RESOURCE_EXHAUSTED and f.reason == "RATE_LIMITED", f
    assert f.retry_delay is not None and 29 <= f.retry_delay <= 30
    assert statuses(control, TICKETS, "POST") == [429]
    assert control.tickets() == []


def test_trengos_real_rate_limit_is_resource_exhausted_with_its_retry_after(stub, control):
    control.configure(rate_limit_per_minute=2)  # channels + search, then the create is over the limit
    f = fails(lambda: stub.Identify(phone_identify(), timeout=2))
    assert f.code == grpc.StatusCode.RESOURCE_EXHAUSTED and f.reason == "RATE_LIMITED", f
    assert f.retry_delay is not None and f.retry_delay > 30
    assert [s for _, _, s in calls(control)] == [200, 200, 429]
    assert control.contacts() == []


def test_a_429_holds_every_call_sharing_the_token(make_sidecar, control):
    """Another client used up the token's minute: after a 429, no call goes out until Retry-After."""
    sidecar = make_sidecar(rateLimitPerMinute=120)
    channel, stub = sidecar.stub()
    stub.Identify(phone_identify("+31600000009"), timeout=5)  # channels listed and cached
    control.add_fault(method="GET", path=SEARCH, status=429, headers={"Retry-After": "1"})
    limited = stub.Identify.future(phone_identify("+31600000000"), timeout=5)
    ends = time.monotonic() + 5
    while sidecar.sidecar.client.limiter.wait_now() < 0.5:  # the sidecar has the 429 in hand
        assert time.monotonic() < ends, "the 429 never held the limiter"
        time.sleep(0.01)
    people = ["+31600000001", "+31600000002"]
    with ThreadPoolExecutor(2) as pool:
        results = [
            limited.result(),
            *pool.map(lambda phone: stub.Identify(phone_identify(phone), timeout=5), people),
        ]
    assert len({r.contact_id for r in results}) == 3
    requests = control.requests()
    [the_429] = [r for r in requests if r["status"] == 429]
    later = [r["at"] - the_429["at"] for r in requests if r["at"] > the_429["at"]]
    assert len(later) == 6 and min(later) >= 0.9  # nothing reached Trengo inside the Retry-After second
    identifiers = sorted(c["phone"] for c in control.contacts())  # Trengo keeps the phone in E.164
    assert identifiers == ["+31600000000", *people, "+31600000009"]
    channel.close()


def test_a_429_with_a_nonsense_retry_after_falls_back_to_backoff(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, status=429, headers={"Retry-After": "inf"})
    result = stub.Track(track(), timeout=5)
    assert statuses(control, TICKETS, "POST") == [429, 201]
    assert [t["id"] for t in control.tickets()] == [result.ticket_id]


def test_a_429_asking_for_ages_is_capped_so_it_cannot_hold_the_token_forever(start, control, ann):
    stub = start(rateLimitPerMinute=120)
    control.add_fault(method="POST", path=TICKETS, status=429, headers={"Retry-After": "1e12"})
    f = fails(lambda: stub.Track(track(), timeout=2))
    assert f.code == grpc.StatusCode.RESOURCE_EXHAUSTED and f.reason == "RATE_LIMITED", f
    assert f.retry_delay is not None and 0 < f.retry_delay <= MAX_RETRY_AFTER_SECONDS
    assert statuses(control, TICKETS, "POST") == [429] and control.tickets() == []


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 2.5 "}, 2.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": formatdate(NOW + 30).replace("+0000", "-0000")}, 30.0),  # GMT, not local time
        ({"Retry-After": formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"X-RateLimit-Reset": str(int(NOW) + 12)}, 12.0),  # an epoch, as Laravel sends it
        ({"X-RateLimit-Reset": "12"}, 12.0),  # a delay, as some proxies send it
        ({"Retry-After": "soon", "X-RateLimit-Reset": str(int(NOW) + 4)}, 4.0),
        ({"Retry-After": "nan", "X-RateLimit-Reset": "4"}, 4.0),
        ({"Retry-After": "3", "X-RateLimit-Reset": str(int(NOW) + 40)}, 3.0),  # Retry-After wins
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "1e400"}, None),
        ({"Retry-After": "1e12"}, MAX_RETRY_AFTER_SECONDS),
        ({"X-RateLimit-Reset": str(int(NOW) + 86_400)}, MAX_RETRY_AFTER_SECONDS),
        ({"Retry-After": "Mon, 99 Foo 2026 99:99:99 GMT"}, None),
        ({"X-RateLimit-Reset": "tomorrow"}, None),
        ({}, None),
    ],
)
def test_how_long_a_429_asks_to_wait(headers, seconds):
    assert retry_after(httpx.Headers(headers), now=NOW) == seconds


def test_backoff_is_exponential_with_full_jitter():
    policy = RetryPolicy(max_attempts=10, base_seconds=0.1, max_seconds=1.0)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        waits = [policy.backoff(attempt) for _ in range(400)]
        assert all(0 <= w <= cap for w in waits)
        assert min(waits) < cap * 0.25 and max(waits) > cap * 0.75  # spread over the whole range


# --- the client-side rate limiter -----------------------------------------------------------------


def test_the_limiter_defaults_to_120_per_minute():
    from sidecar.config.load import build_config

    config = build_config({"apiToken": "t", "channelId": 1})
    assert config.rate_limit_per_minute == 120


def test_the_limiter_makes_a_call_wait_for_a_slot(start, control):
    # A one-second window stands in for the minute, so the test does not wait a minute.
    stub = start(rateLimitPerMinute=2, rateLimitWindowSeconds=1)
    result = stub.Identify(phone_identify(), timeout=5)  # three calls: the third waits for a slot
    assert result.action == pb.ACTION_CREATE_CONTACT
    times = [r["at"] for r in control.requests()]
    assert len(times) == 3
    assert times[2] - times[0] >= 0.9  # never more than 2 calls inside one window, as Trengo saw it
    assert len(control.contacts()) == 1


def test_no_slot_before_the_deadline_is_resource_exhausted(start, control):
    stub = start(rateLimitPerMinute=2)
    f = fails(lambda: stub.Identify(phone_identify(), timeout=2))  # the create would need a third slot
    assert f.code == grpc.StatusCode.RESOURCE_EXHAUSTED and f.reason == "RATE_LIMITED", f
    assert f.retry_delay is not None and f.retry_delay > 0
    assert [m for m, _, _ in calls(control)] == ["GET", "GET"]
    assert control.contacts() == []


def test_a_429_while_a_call_waits_for_a_slot_makes_it_wait_longer(monkeypatch):
    """A call already asleep in the limiter must not wake into Retry-After's window."""
    monkeypatch.setattr(ratelimit, "WINDOW_SECONDS", 0.3)

    async def scenario() -> float:
        limiter = ratelimit.RateLimiter(per_minute=1, max_waiting=10)
        deadline = Deadline.after(5)
        await limiter.acquire(deadline)  # the only slot: the next frees in 0.3 s
        waiter = asyncio.ensure_future(limiter.acquire(deadline))
        await asyncio.sleep(0.1)
        penalised_at = time.monotonic()
        limiter.penalise(1.0)  # Trengo said 429, Retry-After: 1
        await waiter
        return time.monotonic() - penalised_at

    assert asyncio.run(scenario()) >= 0.95


def test_a_full_queue_is_resource_exhausted_at_once(make_sidecar, control):
    sidecar = make_sidecar(rateLimitPerMinute=1, rateLimitQueueSize=1)
    channel, stub = sidecar.stub()
    with channel:
        # The first call takes the only slot (GET /channels), then queues for the next one.
        waiting = stub.Identify.future(identify(), timeout=100)
        ends = time.monotonic() + 5
        while sidecar.sidecar.client.limiter.waiting < 1:
            assert time.monotonic() < ends and not waiting.done(), "the first call never queued"
            time.sleep(0.01)
        f = fails(lambda: stub.Identify(identify("bob@example.com"), timeout=100))
        waiting.cancel()
    assert f.code == grpc.StatusCode.RESOURCE_EXHAUSTED and f.reason == "RATE_LIMITED", f
    assert "already waiting" in f.message and f.retry_delay is not None
    assert calls(control) == [("GET", "/channels", 200)]


# --- dropped connections -----------------------------------------------------------------------------


def test_a_dropped_read_is_retried(stub, control):
    control.add_fault(method="GET", path=SEARCH, drop=True)
    result = stub.Identify(phone_identify(), timeout=5)
    assert statuses(control, SEARCH, "GET") == [0, 200]
    assert [c["id"] for c in control.contacts()] == [result.contact_id]


def test_a_dropped_update_is_retried_it_is_idempotent(stub, control, ann):
    control.add_fault(method="PUT", drop=True)
    result = stub.Identify(identify(name="Ann Lee"), timeout=5)
    assert result.action == pb.ACTION_UPDATE_CONTACT
    assert statuses(control, f"{API}/contacts/", "PUT") == [0, 200]
    assert control.contacts()[0]["name"] == "Ann Lee"


def test_a_ticket_whose_request_was_dropped_is_outcome_unknown_and_never_resent(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, drop=True)
    f = fails(lambda: stub.Track(track(message_id="m-drop"), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert f.retry_delay is None  # retrying could write twice: no RetryInfo
    again = fails(lambda: stub.Track(track(message_id="m-drop"), timeout=5))
    assert again.reason == "TRENGO_OUTCOME_UNKNOWN"
    assert statuses(control, TICKETS, "POST") == [0]
    assert control.tickets() == []


def test_a_ticket_whose_answer_was_lost_exists_once_and_a_repeat_gets_the_same_error(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, drop=True, after=True)
    f = fails(lambda: stub.Track(track(message_id="m-lost"), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    again = fails(lambda: stub.Track(track(message_id="m-lost"), timeout=5))
    assert (again.code, again.reason) == (f.code, f.reason)
    assert statuses(control, TICKETS, "POST") == [0]
    assert len(control.tickets()) == 1  # written once by Trengo, never a second time


def test_a_contact_whose_create_answer_was_lost_is_found_by_a_search(stub, control):
    control.add_fault(method="POST", path=CREATE, drop=True, after=True)
    result = stub.Identify(identify(name="Ann"), timeout=5)
    [contact] = control.contacts()
    assert result.contact_id == contact["id"] and result.action == pb.ACTION_CREATE_CONTACT
    assert calls(control) == [
        ("GET", "/channels", 200),
        ("POST", f"/channels/{EMAIL_CHANNEL}/contacts", 0),
        ("GET", "/contacts", 200),
    ]


def test_a_contact_create_dropped_before_trengo_saw_it_is_sent_again_after_a_search(stub, control):
    control.add_fault(method="POST", path=CREATE, drop=True)
    result = stub.Identify(identify(name="Ann"), timeout=5)
    [contact] = control.contacts()
    assert result.contact_id == contact["id"]
    assert statuses(control, CREATE, "POST") == [0, 201]
    assert statuses(control, SEARCH, "GET") == [200]  # after the lost create: it is not there


def test_a_read_answered_with_a_bogus_content_encoding_is_retried(stub, control):
    control.add_fault(
        method="GET", path=SEARCH, status=200, body="not gzip", headers={"Content-Encoding": "gzip"}
    )
    result = stub.Identify(phone_identify(), timeout=5)
    assert statuses(control, SEARCH, "GET") == [200, 200]
    assert [c["id"] for c in control.contacts()] == [result.contact_id]


def test_a_write_answered_with_a_bogus_content_encoding_is_outcome_unknown(stub, control, ann):
    control.add_fault(
        method="POST", path=TICKETS, status=201, body="x", headers={"Content-Encoding": "gzip"}, after=True
    )
    f = fails(lambda: stub.Track(track(), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert len(control.requests(path_prefix=TICKETS, method="POST")) == 1 and len(control.tickets()) == 1


def test_an_update_answered_2xx_with_a_garbled_body_happened_and_is_not_resent(stub, control, ann):
    control.add_fault(method="PUT", status=200, body="<html>ok</html>", after=True)
    result = stub.Identify(identify(name="Ann Lee", message_id="m-put"), timeout=5)
    assert result.action == pb.ACTION_UPDATE_CONTACT and result.contact_id == ann["id"]
    assert statuses(control, f"{API}/contacts/", "PUT") == [200]
    assert [c["name"] for c in control.contacts()] == ["Ann Lee"]


def test_an_update_answered_with_a_bogus_content_encoding_is_retried(stub, control, ann):
    # Unreadable before its status is known to mean anything: an update is simply sent again.
    control.add_fault(method="PUT", status=200, body="not gzip", headers={"Content-Encoding": "gzip"})
    result = stub.Identify(identify(name="Ann Lee"), timeout=5)
    assert result.action == pb.ACTION_UPDATE_CONTACT
    assert statuses(control, f"{API}/contacts/", "PUT") == [200, 200]
    assert [c["name"] for c in control.contacts()] == ["Ann Lee"]


def test_json_nested_past_pythons_limit_is_a_bad_answer_not_a_crash(stub, control, ann):
    control.add_fault(method="GET", path=SEARCH, status=200, body="[" * 100_000)
    control.add_fault(method="POST", path=TICKETS, status=422, body='{"a":' * 100_000)
    f = fails(lambda: stub.Track(track(), timeout=5))
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "TRENGO_REJECTED", f
    assert statuses(control, SEARCH, "GET") == [200, 200]  # the garbled search was retried
    assert statuses(control, TICKETS, "POST") == [422] and control.tickets() == []


# --- slow answers against short deadlines -----------------------------------------------------------


def test_a_slow_search_against_a_short_deadline_is_unavailable_before_the_deadline(stub, control):
    control.add_fault(method="GET", path=SEARCH, delay=1.5, count=-1)
    f = fails(lambda: stub.Identify(phone_identify(), timeout=0.8))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE", f
    assert f.retry_delay is not None
    settle(control)
    assert not control.requests(method="POST") and control.contacts() == []


def test_a_slow_answer_past_the_request_timeout_is_retried_within_the_deadline(start, control):
    stub = start(requestTimeoutSeconds=0.3)
    control.add_fault(method="GET", path=SEARCH, delay=1.0)
    result = stub.Identify(phone_identify(), timeout=5)
    assert result.action == pb.ACTION_CREATE_CONTACT
    settle(control)
    assert statuses(control, SEARCH, "GET") == [200, 200]  # the first answered after we gave up on it
    assert len(control.contacts()) == 1


def test_a_slow_ticket_write_is_outcome_unknown_and_written_at_most_once(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, delay=1.5)
    f = fails(lambda: stub.Track(track(message_id="m-slow"), timeout=0.8))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert f.retry_delay is None
    settle(control)
    again = fails(lambda: stub.Track(track(message_id="m-slow"), timeout=2))
    assert again.reason == "TRENGO_OUTCOME_UNKNOWN"
    assert len(control.requests(path_prefix=TICKETS, method="POST")) == 1
    assert len(control.tickets()) == 1  # Trengo finished the write after the sidecar gave up


@contextmanager
def trickling_proxy(upstream: str, method: str, path: str, gap: float = 0.05) -> Iterator[str]:
    """A proxy in front of the simulator that sends its answers to ``method path`` one byte every ``gap``
    seconds: every read is quick, so no per-read timeout fires, but the answer takes many seconds.

    Yields the base URL to give the sidecar; the simulator still records every request.
    """
    origin = upstream.removesuffix(API)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            keep = ("authorization", "accept", "content-type")
            headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
            answer = httpx.request(self.command, origin + self.path, headers=headers, content=body)
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.send_header("Connection", "close")
            self.end_headers()
            if not (self.command == method and self.path.startswith(path)):
                self.wfile.write(answer.content)
                return
            try:
                for byte in answer.content:
                    self.wfile.write(bytes([byte]))
                    time.sleep(gap)
            except OSError:
                pass  # the sidecar gave up on the answer and closed the connection

        do_GET = do_POST = do_PUT = forward

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{API}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_read_answered_a_byte_at_a_time_is_unavailable_before_the_deadline(sim, make_sidecar, control):
    with trickling_proxy(sim.base_url, "GET", SEARCH) as base_url:
        channel, stub = make_sidecar(baseUrl=base_url).stub()
        with channel:
            started = time.monotonic()
            f = fails(lambda: stub.Identify(phone_identify(), timeout=1.0))
            took = time.monotonic() - started
    # Its own answer, before the deadline (httpx's timeouts alone let it run for the whole trickle).
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE", f
    assert f.retry_delay is not None and took < 1.0
    assert statuses(control, SEARCH, "GET") == [200]  # answered by Trengo, in full, too slowly
    assert not control.requests(method="POST") and control.contacts() == []


def test_a_ticket_answered_a_byte_at_a_time_is_outcome_unknown_before_the_deadline(
    sim, make_sidecar, control, ann
):
    with trickling_proxy(sim.base_url, "POST", TICKETS) as base_url:
        channel, stub = make_sidecar(baseUrl=base_url).stub()
        with channel:
            started = time.monotonic()
            f = fails(lambda: stub.Track(track(message_id="m-trickle"), timeout=1.0))
            took = time.monotonic() - started
            again = fails(lambda: stub.Track(track(message_id="m-trickle"), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert f.retry_delay is None and took < 1.0
    assert again.reason == "TRENGO_OUTCOME_UNKNOWN"
    assert statuses(control, TICKETS, "POST") == [201]
    assert len(control.tickets()) == 1  # Trengo wrote it; the sidecar never sent it again


def test_a_ticket_is_not_sent_with_too_little_time_left_to_hear_back(stub, control, ann):
    """A slow search leaves less than MIN_WRITE_SECONDS: the POST is not sent, so the caller gets a
    clean UNAVAILABLE it can retry, not an unknown outcome remembered under its message_id."""
    # timeout 1.0: the sidecar's deadline is 0.9 s, and the search leaves at most 0.18 s of it, well
    # under 0.25 s however fast the sidecar (the work and the gRPC hop before the search may take up
    # to 0.18 s before the search itself times out).
    control.add_fault(method="GET", path=SEARCH, delay=0.72)
    f = fails(lambda: stub.Track(track(message_id="m-late"), timeout=1.0))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_UNAVAILABLE", f
    assert f.retry_delay is not None and "not sent" in f.message
    settle(control)
    assert statuses(control, SEARCH, "GET") == [200]
    assert not control.requests(path_prefix=TICKETS, method="POST")
    result = stub.Track(track(message_id="m-late"), timeout=5)
    assert not result.replayed
    assert statuses(control, TICKETS, "POST") == [201]
    assert [t["id"] for t in control.tickets()] == [result.ticket_id]


# --- malformed answers -----------------------------------------------------------------------------------


def test_a_search_answered_with_malformed_json_is_retried(stub, control):
    control.add_fault(method="GET", path=SEARCH, status=200, body="{not json")
    result = stub.Identify(phone_identify(), timeout=5)
    assert statuses(control, SEARCH, "GET") == [200, 200]
    assert [c["id"] for c in control.contacts()] == [result.contact_id]


def test_a_search_that_keeps_answering_garbage_is_unavailable_and_creates_nothing(stub, control):
    control.add_fault(method="GET", path=SEARCH, status=200, body="<html>oops</html>", count=-1)
    f = fails(lambda: stub.Identify(phone_identify(), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_BAD_RESPONSE", f
    assert f.retry_delay is not None  # the contract: retrying the same call can succeed
    assert not control.requests(method="POST") and control.contacts() == []


def test_a_search_answering_an_error_object_is_a_failed_look_up_not_no_contact(stub, control):
    control.add_fault(method="GET", path=SEARCH, status=200, body={"error": "Request failed", "status": 404})
    f = fails(lambda: stub.Identify(phone_identify(), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_BAD_RESPONSE", f
    assert f.retry_delay is not None
    assert not control.requests(method="POST") and control.contacts() == []


def test_a_channel_list_that_is_a_json_array_is_a_bad_response(stub, control):
    control.add_fault(method="GET", path=f"{API}/channels", status=200, body="[1, 2, 3]", count=-1)
    f = fails(lambda: stub.Identify(identify(), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_BAD_RESPONSE", f
    assert not control.requests(method="POST")


def test_a_ticket_answered_with_malformed_json_is_outcome_unknown_and_not_resent(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, status=201, body='{"id": 7', after=True)
    f = fails(lambda: stub.Track(track(message_id="m-bad"), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert f.retry_delay is None
    again = fails(lambda: stub.Track(track(message_id="m-bad"), timeout=5))
    assert again.reason == "TRENGO_OUTCOME_UNKNOWN"
    assert statuses(control, TICKETS, "POST") == [201]
    assert len(control.tickets()) == 1


def test_a_ticket_answered_without_an_id_is_outcome_unknown(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, status=201, body={"ok": True}, after=True)
    f = fails(lambda: stub.Track(track(), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.reason == "TRENGO_OUTCOME_UNKNOWN", f
    assert len(control.tickets()) == 1


def test_a_contact_create_answered_with_malformed_json_is_reconciled_by_a_search(stub, control):
    control.add_fault(method="POST", path=CREATE, status=201, body="oops", after=True)
    result = stub.Identify(identify(name="Ann"), timeout=5)
    [contact] = control.contacts()
    assert result.contact_id == contact["id"]
    assert statuses(control, CREATE, "POST") == [201]


def test_a_contact_create_answered_without_an_id_is_reconciled_by_a_search(stub, control):
    control.add_fault(method="POST", path=CREATE, status=201, body={"data": []}, after=True)
    result = stub.Identify(identify(name="Ann", message_id="m-noid"), timeout=5)
    [contact] = control.contacts()
    assert result.contact_id == contact["id"]
    assert statuses(control, CREATE, "POST") == [201]


def test_a_422_with_a_non_json_body_is_rejected_with_trengos_words(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, status=422, body="subject too long")
    f = fails(lambda: stub.Track(track(), timeout=5))
    assert f.code == grpc.StatusCode.FAILED_PRECONDITION and f.reason == "TRENGO_REJECTED"
    assert "subject too long" in f.message
    assert statuses(control, TICKETS, "POST") == [422]


# --- idempotency by message_id ------------------------------------------------------------------------


def test_the_same_message_id_twice_writes_once(stub, control, ann):
    first = stub.Track(track(message_id="m-1"), timeout=5)
    second = stub.Track(track(message_id="m-1"), timeout=5)
    assert not first.replayed and second.replayed and second.message_id == "m-1"
    assert second.ticket_id == first.ticket_id and list(second.requests) == []
    assert len(control.requests(path_prefix=TICKETS, method="POST")) == 1
    assert [t["id"] for t in control.tickets()] == [first.ticket_id]


def test_different_message_ids_are_different_events(stub, control, ann):
    stub.Track(track(message_id="m-1"), timeout=5)
    stub.Track(track(message_id="m-2"), timeout=5)
    assert len(control.tickets()) == 2


def test_the_same_message_id_concurrently_writes_once(stub, control, ann):
    control.add_fault(method="POST", path=TICKETS, delay=0.3)  # all eight arrive while it is in flight
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: stub.Track(track(message_id="m-c"), timeout=5), range(8)))
    assert len({r.ticket_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert len(control.requests(path_prefix=TICKETS, method="POST")) == 1
    assert len(control.tickets()) == 1


def test_the_same_message_id_concurrently_creates_one_contact(stub, control):
    control.add_fault(method="POST", path=CREATE, delay=0.3)  # all eight arrive while it is in flight
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: stub.Identify(identify(message_id="m-i", name="Ann"), timeout=5), range(8))
        )
    assert len({r.contact_id for r in results}) == 1
    assert len(control.requests(method="POST")) == 1 and len(control.contacts()) == 1


def test_a_message_id_that_failed_to_reach_trengo_can_be_sent_again(start, control, ann):
    stub = start(maxAttempts=2)
    control.add_fault(method="POST", path=TICKETS, status=503, count=2)
    f = fails(lambda: stub.Track(track(message_id="m-retry"), timeout=5))
    assert f.code == grpc.StatusCode.UNAVAILABLE and f.retry_delay is not None
    result = stub.Track(track(message_id="m-retry"), timeout=5)
    assert not result.replayed
    assert statuses(control, TICKETS, "POST") == [503, 503, 201]
    assert [t["id"] for t in control.tickets()] == [result.ticket_id]


# --- concurrency: one new person, many calls --------------------------------------------------------------


def test_12_concurrent_identifies_for_one_new_phone_number_make_one_contact(start, control):
    stub = start(channelId=SMS_CHANNEL, enableDedup=True)
    control.add_fault(method="GET", path=SEARCH, delay=0.3)  # all twelve arrive while the search runs
    phone = "+31 6 1234 5678"

    def call(i: int) -> pb.DeliveryResult:
        request = pb.IdentifyRequest(message_id=f"m-{i}", traits=struct({"phone": phone, "name": "Piet"}))
        return stub.Identify(request, timeout=5)

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, range(12)))
    [contact] = control.contacts()
    # Stored as Trengo stores it: E.164 in phone (the identifier is shown as "+31 6 12345678").
    assert {r.contact_id for r in results} == {contact["id"]} and contact["phone"] == "+31612345678"
    assert len(control.requests(path_prefix=f"{API}/channels/{SMS_CHANNEL}/contacts", method="POST")) == 1
    assert len(control.requests(path_prefix=SEARCH, method="GET")) == 1
    assert not control.requests(method="PUT")  # same name: nothing to update


# --- stale cache: contacts deleted or replaced behind the sidecar's back ---------------------------------


def test_a_cached_contact_deleted_in_trengo_is_looked_up_once_more_on_identify(stub, control):
    first = stub.Identify(identify(name="Ann"), timeout=5)
    control.delete_contact(first.contact_id)
    before = len(control.requests())
    second = stub.Identify(identify(name="Ann Lee"), timeout=5)
    [contact] = control.contacts()
    assert second.contact_id == contact["id"] != first.contact_id
    assert second.action == pb.ACTION_CREATE_CONTACT and contact["name"] == "Ann Lee"
    assert calls(control)[before:] == [
        ("PUT", f"/contacts/{first.contact_id}", 404),
        ("POST", f"/channels/{EMAIL_CHANNEL}/contacts", 201),  # e-mail: created again, no search first
    ]


def test_a_cached_contact_replaced_in_trengo_is_found_again_on_identify(stub, control):
    first = stub.Identify(identify(name="Ann"), timeout=5)
    control.delete_contact(first.contact_id)
    replacement = control.add_contact(name="Ann", identifier=EMAIL, channel_id=EMAIL_CHANNEL)
    second = stub.Identify(identify(name="Ann Lee"), timeout=5)
    assert second.contact_id == replacement["id"] and second.action == pb.ACTION_UPDATE_CONTACT
    assert [c["name"] for c in control.contacts()] == ["Ann Lee"]


def test_a_cached_contact_replaced_in_trengo_gets_the_ticket_on_track(stub, control):
    first = stub.Identify(identify(name="Ann"), timeout=5)
    control.delete_contact(first.contact_id)
    replacement = control.add_contact(name="Ann", identifier=EMAIL, channel_id=EMAIL_CHANNEL)
    before = len(control.requests())
    result = stub.Track(track(), timeout=5)
    assert calls(control)[before:] == [
        ("POST", "/tickets", 422),
        ("GET", "/contacts", 200),
        ("POST", "/tickets", 201),
    ]
    [ticket] = control.tickets()
    assert ticket["contact_id"] == replacement["id"] == result.contact_id
    assert ticket["id"] == result.ticket_id


def test_a_cached_contact_deleted_in_trengo_is_not_found_on_track(stub, control):
    first = stub.Identify(identify(name="Ann"), timeout=5)
    control.delete_contact(first.contact_id)
    before = len(control.requests())
    f = fails(lambda: stub.Track(track(), timeout=5))
    assert f.code == grpc.StatusCode.NOT_FOUND and f.reason == "CONTACT_NOT_FOUND", f
    assert calls(control)[before:] == [("POST", "/tickets", 422), ("GET", "/contacts", 200)]
    assert control.tickets() == []

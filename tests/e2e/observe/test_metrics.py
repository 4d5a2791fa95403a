"""Prometheus metrics: a real sidecar, real gRPC calls, /metrics scraped over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from prometheus_client import generate_latest

from sidecar.observe.metrics import ENDPOINTS, MetricsServer, endpoint, install_metrics, start_metrics
from tests.support.harness import EMAIL_CHANNEL, TOKEN, cli_env, free_port, struct
from tests.support.metrics import parse, scrape, value
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[3]


def identify(email: str = "ann@example.com", message_id: str = "", **traits: Any) -> pb.IdentifyRequest:
    return pb.IdentifyRequest(user_id="u1", message_id=message_id, traits=struct({"email": email, **traits}))


def track(event: str = "Product Purchased", email: str = "ann@example.com") -> pb.TrackRequest:
    return pb.TrackRequest(user_id="u1", event=event, context=struct({"traits": {"email": email}}))








@pytest.fixture
def metered(make_sidecar: Any) -> Iterator[tuple[pb_grpc.TrengoSidecarStub, MetricsServer]]:
    """A sidecar with /metrics on a free port, and a stub to call it."""
    thread = make_sidecar()
    server = start_metrics("127.0.0.1:0", thread.sidecar)
    channel = grpc.insecure_channel(thread.address)
    yield pb_grpc.TrengoSidecarStub(channel), server
    channel.close()
    server.close()


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/contacts", "/contacts"),
        ("/contacts/123", "/contacts/{id}"),
        ("/channels", "/channels"),
        ("/channels/405980/contacts", "/channels/{id}/contacts"),
        ("/tickets", "/tickets"),
        ("/tickets/", "/tickets"),
        ("/contacts?term=ann@example.com", "/contacts"),
        ("/contacts/ann@example.com", "other"),
        ("/unknown/path", "other"),
        ("", "other"),
    ],
)
def test_endpoint_templates_are_a_small_fixed_set(path, template):
    assert endpoint(path) == template


def test_rpcs_trengo_requests_and_caches_are_counted(metered, control):
    stub, server = metered
    first = stub.Identify(identify(name="Ann"))  # GET /channels, POST /channels/{id}/contacts: no search
    second = stub.Identify(identify(name="Ann Lee"))  # from the cache: PUT /contacts/{id}
    assert second.contact_cache_hit and second.contact_id == first.contact_id
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(pb.IdentifyRequest(traits=struct({"email": "not an email"})))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.Track(track("Product Purchased"))  # POST /tickets

    text, samples = scrape(server.url)

    rpcs = "trengo_sidecar_rpcs_total"
    assert value(samples, rpcs, method="Identify", code="OK") == 2
    assert value(samples, rpcs, method="Identify", code="INVALID_ARGUMENT") == 1
    assert value(samples, rpcs, method="Track", code="OK") == 1
    assert value(samples, "trengo_sidecar_rpc_duration_seconds_count", method="Identify") == 3
    assert value(samples, "trengo_sidecar_rpc_duration_seconds_bucket", method="Track", le="+Inf") == 1

    requests = "trengo_sidecar_trengo_requests_total"
    assert value(samples, requests, endpoint="/channels", method="GET", status="200") == 1
    assert value(samples, requests, endpoint="/contacts", method="GET", status="200") == 0
    assert value(samples, requests, endpoint="/channels/{id}/contacts", method="POST", status="201") == 1
    assert value(samples, requests, endpoint="/contacts/{id}", method="PUT", status="200") == 1
    assert value(samples, requests, endpoint="/tickets", method="POST", status="201") == 1
    assert sum(v for (name, _), v in samples.items() if name == requests) == len(control.requests()) == 4
    assert (
        value(
            samples,
            "trengo_sidecar_trengo_request_duration_seconds_count",
            endpoint="/tickets",
            method="POST",
        )
        == 1
    )

    # The contact and channel were looked up once each, then found in the cache twice (Identify, Track).
    assert value(samples, "trengo_sidecar_cache_hits_total", cache="contacts") == 2
    assert value(samples, "trengo_sidecar_cache_misses_total", cache="contacts") == 1
    assert value(samples, "trengo_sidecar_cache_entries", cache="contacts") == 1
    assert value(samples, "trengo_sidecar_cache_hits_total", cache="channels") == 2
    assert value(samples, "trengo_sidecar_cache_misses_total", cache="channels") == 1
    assert value(samples, "trengo_sidecar_cache_entries", cache="channels") == 1
    assert ("trengo_sidecar_cache_entries", frozenset({("cache", "idempotency")})) in samples
    assert ("trengo_sidecar_rate_limit_wait_seconds_total", frozenset()) in samples
    assert value(samples, "trengo_sidecar_rate_limit_queue_depth") == 0
    assert value(samples, "trengo_sidecar_idempotent_replays_total") == 0

    # Nothing secret or personal, and no raw URL, in any label.
    assert TOKEN not in text and "ann@example.com" not in text and "/api/v2" not in text
    labels = {(k, v) for (_, pairs) in samples for k, v in pairs}
    assert {v for k, v in labels if k == "endpoint"} <= ENDPOINTS
    assert not any(str(EMAIL_CHANNEL) in v or str(first.contact_id) in v for _, v in labels)


def test_retries_answerless_attempts_and_replays_are_counted(metered, control):
    stub, server = metered
    control.add_fault(method="GET", path="/api/v2/contacts", drop=True)  # no answer: status "0"
    control.add_fault(method="POST", path="/api/v2/channels/", status=503)
    first = stub.Identify(identify(name="Ann", message_id="m-1"))
    again = stub.Identify(identify(name="Ann", message_id="m-1"))
    assert again.replayed and not first.replayed and again.contact_id == first.contact_id
    control.add_contact(name="Bob", identifier="bob@example.com", channel_id=EMAIL_CHANNEL)
    stub.Track(track(email="bob@example.com"))  # not cached: the search, dropped once

    _, samples = scrape(server.url)

    requests = "trengo_sidecar_trengo_requests_total"
    assert value(samples, requests, endpoint="/contacts", method="GET", status="0") == 1
    assert value(samples, requests, endpoint="/contacts", method="GET", status="200") == 1
    assert value(samples, requests, endpoint="/channels/{id}/contacts", method="POST", status="503") == 1
    assert value(samples, requests, endpoint="/channels/{id}/contacts", method="POST", status="201") == 1
    retries = "trengo_sidecar_trengo_retries_total"
    assert value(samples, retries, endpoint="/contacts", reason="TRENGO_UNAVAILABLE") == 1
    assert value(samples, retries, endpoint="/channels/{id}/contacts", reason="TRENGO_UNAVAILABLE") == 1
    assert value(samples, "trengo_sidecar_idempotent_replays_total") == 1
    assert value(samples, "trengo_sidecar_cache_hits_total", cache="idempotency") == 1
    assert value(samples, "trengo_sidecar_cache_entries", cache="idempotency") == 1
    assert value(samples, "trengo_sidecar_rpcs_total", method="Identify", code="OK") == 2


def test_each_sidecar_has_its_own_registry(make_sidecar, control):
    busy, idle = make_sidecar(), make_sidecar()
    busy_registry, idle_registry = install_metrics(busy.sidecar), install_metrics(idle.sidecar)
    channel, stub = busy.stub()
    with channel:
        stub.Identify(identify())
    busy_samples = parse(generate_latest(busy_registry).decode())
    idle_samples = parse(generate_latest(idle_registry).decode())
    assert value(busy_samples, "trengo_sidecar_rpcs_total", method="Identify", code="OK") == 1
    assert value(idle_samples, "trengo_sidecar_rpcs_total", method="Identify", code="OK") == 0
    assert value(idle_samples, "trengo_sidecar_cache_misses_total", cache="contacts") == 0


def test_the_cli_serves_metrics_and_stops_cleanly_on_sigterm(sim, control, tmp_path):
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiToken": TOKEN,
                "baseUrl": sim.base_url,
                "channelId": EMAIL_CHANNEL,
                "rateLimitPerMinute": 0,
                "shutdownGraceSeconds": 1,
            }
        )
    )
    grpc_port, metrics_port = free_port(), free_port()
    log = tmp_path / "sidecar.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar",
                "--config",
                str(config),
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
                "--listen",
                f"127.0.0.1:{grpc_port}",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=cli_env(),
        )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, f"sidecar exited {process.returncode}: {log.read_text()}"
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"/metrics never answered: {log.read_text()}"
                time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            pb_grpc.TrengoSidecarStub(channel).Identify(identify(name="Ann"), timeout=10)
        text, samples = scrape(url)
        assert value(samples, "trengo_sidecar_rpcs_total", method="Identify", code="OK") == 1
        assert (
            value(
                samples,
                "trengo_sidecar_trengo_requests_total",
                endpoint="/channels/{id}/contacts",
                method="POST",
                status="201",
            )
            == 1
        )
        assert TOKEN not in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

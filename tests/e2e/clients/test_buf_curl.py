"""grpcurl-style use of a real sidecar with `buf curl` (the buf CLI `make node` installs), over reflection.

What these commands do is what an operator types by hand: the sidecar must stay usable without stubs.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2

from tests.support.harness import EMAIL_CHANNEL

BUF = Path(__file__).resolve().parents[3] / "clients" / "node" / "node_modules" / ".bin" / "buf"
SERVICE = "trengo.sidecar.v1.TrengoSidecar"


@pytest.fixture
def curl():
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: run `make node` (npm ci in clients/node installs the buf CLI)")

    def run(address: str, method: str, body: Any = None, *flags: str) -> subprocess.CompletedProcess[str]:
        args = [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *flags]
        if body is not None:
            args += ["-d", json.dumps(body)]
        return subprocess.run([*args, f"http://{address}/{method}".rstrip("/")],
                              capture_output=True, text=True, timeout=60, check=False)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_list_methods_and_health_check_over_reflection(curl, sidecar):
    listing = curl(sidecar.address, "", None, "--list-methods")
    assert listing.returncode == 0, listing
    assert {f"{SERVICE}/Identify", f"{SERVICE}/Track", f"{SERVICE}/SendEvent",
            "grpc.health.v1.Health/Check"} <= set(listing.stdout.split())
    for body in (None, {"service": SERVICE}):
        assert ok(curl(sidecar.address, "grpc.health.v1.Health/Check", body)) == {"status": "SERVING"}


def test_identify_then_track_with_json_bodies(curl, sidecar, control):
    identify = {"userId": "u1", "traits": {"email": "ann@example.com", "firstName": "Ann", "lastName": "Lee"}}
    contact = ok(curl(sidecar.address, f"{SERVICE}/Identify", identify))
    assert contact["action"] == "ACTION_CREATE_CONTACT"
    assert contact["channelId"] == str(EMAIL_CHANNEL)  # int64 is a JSON string
    [created] = control.contacts()
    assert str(created["id"]) == contact["contactId"] and created["name"] == "Ann Lee"
    track = {"event": "Added to cart", "properties": {"revenue": 2000},
             "context": {"traits": {"email": "ann@example.com"}}, "messageId": "m-1"}
    ticket = ok(curl(sidecar.address, f"{SERVICE}/Track", track))
    assert ticket["action"] == "ACTION_CREATE_TICKET" and ticket["messageId"] == "m-1"
    [stored] = control.tickets()
    assert str(stored["id"]) == ticket["ticketId"] and stored["subject"] == "Product was of value:2000"


def test_send_event_dry_run_writes_nothing(curl, sidecar, control):
    traits = {"email": "bo@example.com", "name": "Bo"}
    event = {"type": "identify", "userId": "u2", "context": {"traits": traits}}
    result = ok(curl(sidecar.address, f"{SERVICE}/SendEvent", {"event": event, "dryRun": True}))
    assert result["dryRun"] is True and result["action"] == "ACTION_CREATE_CONTACT"
    write = result["requests"][-1]
    assert write["method"] == "POST" and "statusCode" not in write  # not sent: status 0, omitted in JSON
    assert write["headers"]["Authorization"] != "Bearer test-token"
    assert json.loads(write["bodyJson"]) == {"name": "Bo", "identifier": "bo@example.com",
                                             "channel_id": EMAIL_CHANNEL}
    assert {r["method"] for r in control.requests()} == {"GET"}
    assert control.contacts() == []


def test_unmapped_event_is_failed_precondition_with_error_info(curl, sidecar, control):
    body = {"event": "Page Viewed", "context": {"traits": {"email": "ann@example.com"}}}
    result = curl(sidecar.address, f"{SERVICE}/Track", body)
    assert result.returncode == 9 * 8, result  # buf curl exits with 8 x the code; FAILED_PRECONDITION is 9
    error = json.loads(result.stderr)
    assert error["code"] == "failed_precondition" and "Page Viewed" in error["message"]
    [detail] = [d for d in error["details"] if d["type"] == "google.rpc.ErrorInfo"]
    value = detail["value"]  # base64 without padding: buf curl cannot decode a type reflection does not serve
    info = error_details_pb2.ErrorInfo.FromString(base64.b64decode(value + "=" * (-len(value) % 4)))
    assert (info.reason, info.domain) == ("EVENT_NOT_MAPPED", "trengo-sidecar.v1")
    assert control.requests() == []


def test_auth_token_is_an_authorization_header(curl, make_sidecar, control):
    guarded = make_sidecar(authToken="curl-secret")
    body = {"traits": {"email": "cy@example.com"}}
    assert ok(curl(guarded.address, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}  # stays open
    refused = curl(guarded.address, f"{SERVICE}/Identify", body)
    assert refused.returncode == 16 * 8 and json.loads(refused.stderr)["code"] == "unauthenticated"
    assert control.requests() == []
    header = ("-H", "authorization: Bearer curl-secret")
    allowed = ok(curl(guarded.address, f"{SERVICE}/Identify", body, *header))
    assert allowed["action"] == "ACTION_CREATE_CONTACT"
    assert [c["identifier"] for c in control.contacts()] == ["cy@example.com"]

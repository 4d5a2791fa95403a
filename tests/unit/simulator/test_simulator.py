"""The Trengo simulator over real sockets: answer shapes, statuses, faults, rate limit, control API, CLI."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # lets the file run without the package being installed
    sys.path.insert(0, str(ROOT))

from sidecar.simulator import SimulatorControl, SimulatorThread  # noqa: E402
from sidecar.simulator.app import token_fingerprint  # noqa: E402
from sidecar.simulator.state import SimState  # noqa: E402

TOKEN = "test-token"
EMAIL, SMS, WHATSAPP, VOIP, CHAT = 405980, 405981, 405982, 405983, 405984


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(tokens=[TOKEN, "other-token"]) as server:
        yield server


@pytest.fixture
def control(sim: SimulatorThread) -> SimulatorControl:
    sim.control.reset()
    sim.control.configure(rate_limit_per_minute=0, existing_email_answer="contact")
    return sim.control


@pytest.fixture
def api(sim: SimulatorThread, control: SimulatorControl) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5, trust_env=False) as client:
        yield client


def create(api: httpx.Client, channel_id: int, identifier: str, name: str | None = "N") -> httpx.Response:
    body = {"identifier": identifier, "channel_id": channel_id}
    if name is not None:
        body["name"] = name
    return api.post(f"/channels/{channel_id}/contacts", json=body)


def test_missing_or_unknown_token_is_401_and_recorded(
    sim: SimulatorThread, control: SimulatorControl
) -> None:
    with httpx.Client(base_url=sim.base_url, trust_env=False) as client:
        bare = client.get("/contacts")
        wrong = client.get("/contacts", headers={"Authorization": "Bearer nope"})
    for answer in (bare, wrong):
        assert answer.status_code == 401
        assert answer.json() == {"message": "Unauthenticated.", "errors": []}
    recorded = control.requests()
    assert [r["status"] for r in recorded] == [401, 401]
    assert recorded[1]["headers"]["authorization"] == "Bearer ****"  # case-insensitive, value masked
    assert recorded[0]["token"] is None and recorded[1]["token"] == token_fingerprint("Bearer nope")


def test_recorded_requests_never_echo_the_token(api: httpx.Client, sim: SimulatorThread) -> None:
    """Issue 10, item 3: /_sim/requests served the Authorization header as sent."""
    api.get("/channels")
    api.get("/channels", headers={"Proxy-Authorization": "Basic dXNlcjpwYXNz"})
    served = httpx.get(f"{sim.control.root}/_sim/requests", timeout=5, trust_env=False)
    assert TOKEN not in served.text and "dXNlcjpwYXNz" not in served.text
    [first, second] = served.json()["requests"]
    assert first["headers"]["Authorization"] == "Bearer ****"
    assert second["headers"]["Proxy-Authorization"] == "Basic ****"
    assert first["token"] == second["token"] == token_fingerprint(f"Bearer {TOKEN}")
    assert first["token"] != token_fingerprint("Bearer other")


def test_email_contact_shape_and_not_duplicated(api: httpx.Client, control: SimulatorControl) -> None:
    first = create(api, EMAIL, "Ann@Example.com", "Ann")
    assert first.status_code == 201
    assert first.json() == {
        "id": 90002431001,
        "name": "Ann",
        "full_name": "Ann",
        "identifier": "Ann@Example.com",
        "email": "Ann@Example.com",
        "phone": None,
        "formatted_phone": None,
        "is_phone": False,
        "channels": [{"id": EMAIL, "type": "EMAIL", "title": "Support email"}],
    }
    again = create(api, EMAIL, "ann@example.com", "Other")
    assert again.status_code == 201
    assert again.json()["id"] == 90002431001
    assert len(control.contacts()) == 1
    assert again.json()["name"] == "Ann"  # the existing contact, its name untouched


def test_email_create_for_a_known_address_can_be_a_422(api: httpx.Client, control: SimulatorControl) -> None:
    known = create(api, EMAIL, "ann@example.com", "Ann").json()
    control.configure(existing_email_answer="422")
    try:
        refused = create(api, EMAIL, "ANN@example.com", "Other")
        assert refused.status_code == 422
        assert refused.json() == {
            "message": "The given data was invalid.",
            "errors": {"identifier": ["A contact with this identifier already exists."]},
        }
        assert create(api, EMAIL, "new@example.com", "New").status_code == 201  # new addresses as ever
        assert create(api, SMS, "+31612345678", "P").status_code == 201  # phone channels never refuse
        assert [c["name"] for c in control.contacts() if c["id"] == known["id"]] == ["Ann"]
        with pytest.raises(httpx.HTTPStatusError) as caught:
            control.configure(existing_email_answer="maybe")
        assert caught.value.response.status_code == 400
    finally:
        control.configure(existing_email_answer="contact")
    assert create(api, EMAIL, "ann@example.com", "X").json()["id"] == known["id"]


def test_phone_contacts_are_duplicated_and_name_defaults(
    api: httpx.Client, control: SimulatorControl
) -> None:
    one = create(api, SMS, "+31 6-1234 5678", name=None).json()
    two = create(api, WHATSAPP, "+31 6-1234 5678", name=None).json()
    assert one["id"] != two["id"] and two["id"] == one["id"] + 1
    assert one["name"] == "+31 6-1234 5678"
    # Stored as Trengo stores it: phone in E.164, identifier and formatted_phone international.
    assert (one["phone"], one["email"], one["is_phone"]) == ("+31612345678", None, True)
    assert one["identifier"] == one["formatted_phone"] == "+31 6 12345678"
    assert len(control.contacts()) == 2


@pytest.mark.parametrize(
    ("channel_id", "body", "status", "field"),
    [
        (999, {"identifier": "a@b.co"}, 404, None),
        (EMAIL, {"name": "x"}, 422, "identifier"),
        (EMAIL, {"identifier": ""}, 422, "identifier"),
        (EMAIL, {"identifier": "not-an-email"}, 422, "identifier"),
        (SMS, {"identifier": "a@b.co"}, 422, "identifier"),
        (VOIP, {"identifier": "+31 12"}, 422, "identifier"),
        (EMAIL, {"identifier": "a@b.co", "name": 12}, 422, "name"),
    ],
)
def test_create_contact_rejections(
    api: httpx.Client, channel_id: int, body: dict[str, object], status: int, field: str | None
) -> None:
    answer = api.post(f"/channels/{channel_id}/contacts", json=body)
    assert answer.status_code == status
    if field is None:
        assert answer.json() == {"message": "Not found."}
    else:
        assert answer.json()["message"] == "The given data was invalid."
        assert list(answer.json()["errors"]) == [field]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
def test_malformed_or_non_object_body_is_422(
    api: httpx.Client, control: SimulatorControl, raw: bytes
) -> None:
    answer = api.post("/tickets", content=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert answer.json()["message"] == "The given data was invalid." and answer.json()["errors"]
    assert control.requests()[0]["raw_body"] == raw.decode()


def test_chat_channel_accepts_any_identifier(api: httpx.Client) -> None:
    assert create(api, CHAT, "visitor-42").status_code == 201


def test_update_contact(api: httpx.Client, control: SimulatorControl) -> None:
    contact = create(api, EMAIL, "bob@example.com", "Bob").json()
    renamed = api.put(f"/contacts/{contact['id']}", json={"name": "Robert"})
    assert renamed.status_code == 200
    assert renamed.json()["name"] == renamed.json()["full_name"] == "Robert"
    assert api.put(f"/contacts/{contact['id']}", json={}).status_code == 422
    assert api.put(f"/contacts/{contact['id']}", json={"name": ["x"]}).status_code == 422
    control.delete_contact(contact["id"])
    gone = api.put(f"/contacts/{contact['id']}", json={"name": "Bob"})
    assert gone.status_code == 404
    assert gone.json() == {"message": "No query results for model [App\\Models\\Contact]."}


def test_create_ticket(api: httpx.Client, control: SimulatorControl) -> None:
    contact = create(api, EMAIL, "t@example.com").json()
    answer = api.post("/tickets", json={"contact_id": contact["id"], "channel_id": EMAIL, "subject": "Hi"})
    assert answer.status_code == 201
    ticket = answer.json()
    assert ticket["id"] == 7000000001 and ticket["status"] == "ASSIGNED" and ticket["subject"] == "Hi"
    assert (ticket["contact_id"], ticket["channel_id"]) == (contact["id"], EMAIL)
    assert ticket["contact"]["id"] == contact["id"] and ticket["channel"]["type"] == "EMAIL"
    assert ticket["created_at"]
    assert [t["id"] for t in control.tickets()] == [7000000001]


def test_create_ticket_unknown_contact_or_channel(api: httpx.Client) -> None:
    answer = api.post("/tickets", json={"contact_id": 1, "channel_id": EMAIL})
    assert answer.status_code == 422
    assert answer.json() == {
        "message": "The given data was invalid.",
        "errors": {"contact_id": ["The selected contact id is invalid."]},
    }
    contact = create(api, EMAIL, "u@example.com").json()
    answer = api.post("/tickets", json={"contact_id": contact["id"], "channel_id": 1})
    assert answer.json()["errors"] == {"channel_id": ["The selected channel id is invalid."]}


def test_search_is_case_insensitive_substring_and_paginated(
    api: httpx.Client, control: SimulatorControl
) -> None:
    for n in range(30):
        control.add_contact(f"Person {n}", f"person{n}@shop.example", EMAIL)
    control.add_contact("Zed", "+31612345678", SMS)
    first = api.get("/contacts", params={"term": "SHOP.EX", "page": 1}).json()
    assert len(first["data"]) == 25
    assert first["meta"] | {"path": None} == {
        "current_page": 1,
        "from": 1,
        "path": None,
        "per_page": 25,
        "to": 25,
        "last_page": 2,
        "total": 30,
    }
    assert first["links"]["next"].endswith("/api/v2/contacts?page=2") and first["links"]["prev"] is None
    second = api.get("/contacts", params={"term": "shop", "page": 2}).json()
    assert [c["name"] for c in second["data"]] == [f"Person {n}" for n in range(25, 30)]
    assert second["links"]["next"] is None
    assert api.get("/contacts", params={"term": "zed"}).json()["meta"]["total"] == 1
    assert api.get("/contacts", params={"term": "nobody"}).json()["data"] == []


def test_plus_in_term_survives_only_when_encoded(api: httpx.Client, control: SimulatorControl) -> None:
    control.add_contact("Zed", "+31612345678", SMS)
    encoded = api.get("/contacts?term=%2B316123&page=1")
    assert encoded.json()["meta"]["total"] == 1
    # Unencoded, the + decodes to a space (form encoding), which Laravel then trims away.
    raw_plus = api.get("/contacts?term=+316123&page=1")
    assert raw_plus.json()["meta"]["total"] == 1
    first, second = control.requests("/api/v2/contacts", "GET")
    assert first["query"] == "term=%2B316123&page=1" and first["params"] == {"term": "+316123", "page": "1"}
    assert second["params"]["term"] == " 316123"


def test_channels_paginate_with_extra_channels() -> None:
    with SimulatorThread(extra_channels=30) as server:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=server.base_url, headers=headers, trust_env=False) as client:
            first = client.get("/channels").json()
            second = client.get("/channels", params={"page": 2}).json()
    assert first["meta"]["total"] == 36 and first["meta"]["last_page"] == 2
    assert first["data"][0] == {"id": EMAIL, "title": "Support email", "type": "EMAIL", "status": "ACTIVE"}
    assert len(second["data"]) == 11 and second["data"][-1]["id"] == 405985 + 30
    assert {c["type"] for c in second["data"]} == {"EMAIL"}


def test_fault_status_body_headers_and_count(api: httpx.Client, control: SimulatorControl) -> None:
    control.add_fault(method="GET", path="/api/v2/contacts", status=503, headers={"Retry-After": "2"})
    control.add_fault(path="/api/v2/contacts", status=200, body={"error": "Request failed", "status": 404})
    assert api.post("/tickets", json={}).status_code == 422  # not matched by either fault
    failed = api.get("/contacts")
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "2"
    odd = api.get("/contacts")
    assert odd.status_code == 200 and odd.json() == {"error": "Request failed", "status": 404}
    assert api.get("/contacts").json()["data"] == []  # both faults used up
    assert [r["status"] for r in control.requests()] == [422, 503, 200, 200]


def test_fault_raw_body_and_forever(api: httpx.Client, control: SimulatorControl) -> None:
    control.add_fault(path="/api/v2/channels", count=-1, status=200, body='{"data": [')
    for _ in range(3):
        answer = api.get("/channels")
        assert answer.status_code == 200 and answer.text == '{"data": ['
    control.clear_faults()
    assert api.get("/channels").json()["meta"]["total"] == 6


def test_fault_delay_only_answers_normally(api: httpx.Client, control: SimulatorControl) -> None:
    control.add_fault(path="/api/v2/channels", delay=0.3)
    started = time.monotonic()
    answer = api.get("/channels")
    assert time.monotonic() - started >= 0.3
    assert answer.status_code == 200 and answer.json()["meta"]["total"] == 6


def test_fault_drop_closes_connection(api: httpx.Client, control: SimulatorControl) -> None:
    control.add_fault(method="POST", path="/api/v2/channels", drop=True)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        create(api, EMAIL, "drop@example.com")
    assert control.contacts() == []  # dropped before the work
    assert control.requests()[0]["status"] == 0
    assert create(api, EMAIL, "drop@example.com").status_code == 201


def test_fault_after_does_the_write_then_loses_the_answer(
    api: httpx.Client, control: SimulatorControl
) -> None:
    contact = create(api, EMAIL, "after@example.com").json()
    control.add_fault(path="/api/v2/tickets", status=503, after=True)
    control.add_fault(path="/api/v2/tickets", drop=True, after=True)
    body = {"contact_id": contact["id"], "channel_id": EMAIL}
    assert api.post("/tickets", json=body).status_code == 503
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.post("/tickets", json=body)
    assert len(control.tickets()) == 2
    assert [r["status"] for r in control.requests("/api/v2/tickets")] == [503, 0]


def test_fault_delay_lets_client_time_out(sim: SimulatorThread, control: SimulatorControl) -> None:
    control.add_fault(path="/api/v2/contacts", delay=0.5)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        httpx.Client(base_url=sim.base_url, headers=headers, timeout=0.1, trust_env=False) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get("/contacts")


def test_rate_limit(api: httpx.Client, sim: SimulatorThread, control: SimulatorControl) -> None:
    control.configure(rate_limit_per_minute=2)
    first, second, third = (api.get("/channels") for _ in range(3))
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert second.status_code == 200 and second.headers["X-RateLimit-Remaining"] == "0"
    assert third.status_code == 429 and third.json() == {"message": "Too Many Attempts."}
    retry_after = int(third.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert abs(int(third.headers["X-RateLimit-Reset"]) - (time.time() + retry_after)) <= 2
    other = api.get("/channels", headers={"Authorization": "Bearer other-token"})
    assert other.status_code == 200  # the window is per token


def test_rate_window_slides() -> None:
    state = SimState(rate_limit_per_minute=2)
    decisions = [state.check_rate("t", now) for now in (100.0, 130.0, 150.0, 160.5)]
    assert [d.allowed if d else None for d in decisions] == [True, True, False, True]
    assert decisions[2] is not None and decisions[2].retry_after == 10
    assert SimState().check_rate("t", 1.0) is None  # off by default


def test_tokens_can_change_at_run_time(api: httpx.Client, control: SimulatorControl) -> None:
    control.configure(tokens=["fresh"])
    try:
        assert api.get("/channels").status_code == 401
        assert api.get("/channels", headers={"Authorization": "Bearer fresh"}).status_code == 200
    finally:
        control.configure(tokens=[TOKEN, "other-token"])


def test_control_api_seeds_resets_and_is_not_recorded(api: httpx.Client, control: SimulatorControl) -> None:
    one = control.add_contact("Dup", "+3161111111", SMS)
    two = control.add_contact("Dup", "+3161111111", SMS)
    assert two["id"] == one["id"] + 1
    channel = control.add_channel("Extra", "EMAIL", id=500000)
    assert channel == {"id": 500000, "title": "Extra", "type": "EMAIL", "status": "ACTIVE"}
    assert any(c["id"] == 500000 for c in control.channels())
    assert api.get("/contacts", params={"term": "3161111"}).json()["meta"]["total"] == 2
    control.add_fault(status=500)
    control.reset()
    assert control.contacts() == [] and control.requests() == []
    assert len(control.channels()) == 6
    assert create(api, EMAIL, "fresh@example.com").json()["id"] == 90002431001  # counters reset, no fault


def test_control_accepts_root_url(sim: SimulatorThread, control: SimulatorControl) -> None:
    with SimulatorControl(sim.base_url.removesuffix("/api/v2")) as root_control:
        assert len(root_control.channels()) == 6


def test_cli_prints_url_serves_and_exits_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRENGO_SIM_TOKENS": "env-token"}
    cmd = [sys.executable, "-m", "sidecar.simulator", "--port", "0", "--token", "cli-token"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the simulator printed nothing"
        line = proc.stdout.readline().strip()
        prefix = "trengo-sim listening on "
        assert line.startswith(prefix) and line.endswith("/api/v2")
        base_url = line.removeprefix(prefix)
        with httpx.Client(base_url=base_url, trust_env=False) as client:
            ok = client.get("/channels", headers={"Authorization": "Bearer cli-token"})
            env_token = client.get("/channels", headers={"Authorization": "Bearer env-token"})
        assert ok.status_code == 200 and env_token.status_code == 401  # --token replaces the env list
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "cli-token" not in out + err and out == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""The HTTP ingest (httpListen), end to end: a real sidecar on SQLite, real HTTP, the simulator as Trengo."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from sidecar.config.load import build_config, load
from sidecar.config.report import check_config
from sidecar.errors import ConfigError
from sidecar.observe.logs import TextFormatter
from sidecar.observe.metrics import install_metrics
from sidecar.simulator import SimulatorControl
from tests.support.harness import SidecarThread, cli_env, pieces
from tests.support.ingest_helpers import (
    OTHER_KEY,
    SUBJECT,
    WRITE_KEY,
    all_deliveries,
    deliveries,
    identify,
    ingest_config,
    post,
    track,
    url_of,
    wait_delivered,
)
from tests.support.queue_helpers import wait_for
from trengo.sidecar.v1 import sidecar_pb2 as pb

ROOT = Path(__file__).resolve().parents[3]
Start = Callable[..., SidecarThread]


@pytest.fixture
def start(make_sidecar: Callable[..., SidecarThread], tmp_path: Path) -> Start:
    def start(**overrides: Any) -> SidecarThread:
        return make_sidecar(**ingest_config(f"sqlite:///{tmp_path}/state.db", **overrides))

    return start


def _stub(thread: SidecarThread) -> Any:
    return thread.stub()[1]


def test_a_gzip_batch_is_queued_in_order_and_delivered(start: Start, control: SimulatorControl):
    thread = start()
    batch = [e for n in range(3) for e in (identify(n), track(n))]
    answer = post(url_of(thread), "batch", {"batch": batch, "sentAt": "2026-12-06T20:00:00Z"}, gzip=True)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 6, "duplicate": 0, "filtered": 0, "rejected": 0, "events": []}
    wait_delivered(_stub(thread), 6)
    assert sorted(c["name"] for c in control.contacts()) == ["Person 0", "Person 1", "Person 2"]
    assert [t["subject"] for t in control.tickets()] == [SUBJECT] * 3


def test_a_batch_of_ten_with_two_invalid_and_a_page(start: Start, control: SimulatorControl):
    thread = start()
    registry = install_metrics(thread.sidecar, process=False)  # type: ignore[arg-type]
    batch = [identify(n) for n in range(7)]
    batch.insert(2, {"type": "identify", "userId": "bad1", "messageId": "bad-email",
                     "traits": {"email": "not an address"}})  # fmt: skip
    batch.insert(5, {"type": "track", "userId": "bad2", "messageId": "no-name", "properties": {}})
    batch.append({"type": "page", "userId": "p000", "messageId": "a-page", "name": "Home"})
    answer = post(url_of(thread), "batch", {"batch": batch})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("accepted", "duplicate", "filtered", "rejected")} == {
        "accepted": 7, "duplicate": 0, "filtered": 1, "rejected": 2}  # fmt: skip
    assert [(e["index"], e["messageId"], e["outcome"]) for e in body["events"]] == [
        (2, "bad-email", "rejected"), (5, "no-name", "rejected"), (9, "a-page", "filtered")]  # fmt: skip
    assert body["events"][0]["field"] == "event.traits.email"
    assert body["events"][1]["field"] == "event.event"
    assert body["events"][2]["reason"] == "type page is not sent to Trengo"
    stub = _stub(thread)
    wait_delivered(stub, 7)
    failed = {d.message_id: d for d in deliveries(stub, pb.DELIVERY_STATE_FAILED)}
    assert sorted(failed) == ["bad-email", "no-name"]
    assert {d.error.reason for d in failed.values()} == {"INVALID_EVENT"}
    assert failed["bad-email"].error.field == "event.traits.email"
    assert (
        stub.GetDelivery(pb.GetDeliveryRequest(message_id="no-name"), timeout=5).error.field == "event.event"
    )
    assert "a-page" not in {d.message_id for d in all_deliveries(stub)}
    assert len(control.contacts()) == 7  # the invalid two and the page never reached Trengo
    listed = subprocess.run(
        [sys.executable, "-m", "sidecar", "deliveries", "--address", thread.address, "list"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "bad-email" in listed.stdout and "no-name" in listed.stdout and "INVALID_EVENT" in listed.stdout
    scrape = generate_latest(registry).decode()
    for outcome, count in (("accepted", 7), ("filtered", 1), ("rejected", 2), ("duplicate", 0)):
        assert f'trengo_sidecar_http_events_total{{outcome="{outcome}"}} {count}.0' in scrape
    assert 'trengo_sidecar_http_requests_total{route="/v1/batch",status="200"} 1.0' in scrape


def test_an_event_past_max_event_fields_is_rejected_naming_the_count(start: Start, control: SimulatorControl):
    thread = start(maxEventFields=50)
    wide = {"type": "track", "userId": "wide", "messageId": "wide", "event": "Product Purchased",
            "properties": {f"k{n}": n for n in range(60)}}  # fmt: skip
    answer = post(url_of(thread), "batch", {"batch": [identify(0), wide]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    [refused] = body["events"]
    assert (refused["messageId"], refused["field"]) == ("wide", "event")
    assert "more than 50 fields" in refused["message"]


def test_a_batch_sent_again_is_acknowledged_and_not_queued_twice(start: Start, control: SimulatorControl):
    thread = start()
    batch = {"batch": [identify(1), track(1)]}
    first = post(url_of(thread), "batch", batch).json()
    again = post(url_of(thread), "batch", batch).json()
    assert (first["accepted"], again["accepted"], again["duplicate"]) == (2, 0, 2)
    wait_delivered(_stub(thread), 2)
    assert len(control.tickets()) == 1 and len(control.contacts()) == 1


def test_events_without_a_message_id_get_one(start: Start, control: SimulatorControl):
    thread = start()
    answer = post(url_of(thread), "batch", {"batch": [{**identify(4), "messageId": None}]})
    assert answer.json()["accepted"] == 1
    [delivered] = wait_delivered(_stub(thread), 1)
    assert len(delivered.message_id) == 32


def test_the_single_event_routes_take_the_key_from_the_body_as_segment_sends_it(start: Start, control):
    thread = start()
    url = url_of(thread)
    one = post(url, "identify", {**identify(5), "type": None, "writeKey": OTHER_KEY}, key=None)
    two = post(url, "track", {**track(5), "writeKey": WRITE_KEY}, key=None)
    assert (one.status_code, two.status_code) == (200, 200), (one.text, two.text)
    for route in ("page", "screen", "group", "alias"):
        answer = post(url, route, {"userId": "p005", "messageId": f"m-{route}"})
        assert answer.json()["filtered"] == 1, answer.text
    wait_delivered(_stub(thread), 2)
    assert [t["subject"] for t in control.tickets()] == [SUBJECT]


@pytest.mark.parametrize("key", [None, "", "wk-wrong", WRITE_KEY[:-1], WRITE_KEY + "x"])
def test_a_missing_or_unknown_key_gets_401_and_nothing_is_queued(start: Start, control, key, caplog):
    caplog.set_level(logging.DEBUG)
    thread = start()
    registry = install_metrics(thread.sidecar, process=False)  # type: ignore[arg-type]
    body = {"batch": [identify(1)]}
    if key is not None:
        body["writeKey"] = key
    answer = post(url_of(thread), "batch", body, key=None)
    assert answer.status_code == 401 and answer.json()["code"] == "WRITE_KEY_INVALID"
    assert answer.headers["WWW-Authenticate"].startswith("Basic")
    basic = post(url_of(thread), "batch", {"batch": [identify(1)]}, key=key or "nope")
    assert basic.status_code == 401
    # A right key in the body does not rescue a wrong one in the header.
    mixed = post(url_of(thread), "batch", {**body, "writeKey": WRITE_KEY}, key="wk-wrong")
    assert mixed.status_code == 401
    assert all_deliveries(_stub(thread)) == [] and control.requests() == []
    logged = "\n".join(TextFormatter().format(r) for r in caplog.records)
    outputs = [answer.text, basic.text, mixed.text, logged, generate_latest(registry).decode()]
    for piece in pieces(WRITE_KEY) + (pieces(key) if key and len(key) > 4 else []):
        assert not any(piece in out for out in outputs), piece
    assert "key=none" in logged and 'status="401"' in outputs[-1]


@pytest.mark.parametrize(
    ("raw", "encoding", "status", "names"),
    [
        (b"{not json", "", 400, "JSON"),
        (b'{"batch": {"type": "identify"}}', "", 400, "batch"),
        (b'{"sentAt": "x"}', "", 400, "batch"),
        (b'["not", "an", "object"]', "", 400, "object"),
        (b'{"batch": [{"type": "identify", "traits": {"n": NaN}}]}', "", 400, "JSON"),
        (b"\xff\xfe garbage", "", 400, "JSON"),
        (b"not gzip at all", "gzip", 400, "gzip"),
        (b'{"batch": [' + b'{"type": "page"},' * 400_000 + b"{}]}", "", 413, "4000 KB"),
        (gzip.compress(b'{"batch": [' + b" " * (5 * 1024 * 1024) + b"]}"), "gzip", 413, "4000 KB"),
    ],
    ids=[
        "bad-json",
        "batch-object",
        "no-batch",
        "list-body",
        "nan",
        "not-utf8",
        "bad-gzip",
        "5MB",
        "5MB-gzip",
    ],
)
def test_a_malformed_body_is_refused_and_nothing_is_queued(
    start: Start, control, raw, encoding, status, names
):
    thread = start()
    headers = {"Content-Encoding": encoding} if encoding else {}
    answer = post(url_of(thread), "batch", None, raw=raw, headers=headers)
    assert answer.status_code == status, answer.text
    assert names in answer.json()["message"] and answer.json()["code"]
    assert all_deliveries(_stub(thread)) == [] and control.requests() == []


def test_config_refuses_http_listen_on_the_memory_store_naming_store():
    with pytest.raises(ConfigError) as caught:
        build_config({"apiToken": "t", "channelId": 1, "httpListen": "127.0.0.1:8088", "writeKeys": ["k"]})
    assert [p.key for p in caught.value.problems] == ["store"]
    with pytest.raises(ConfigError) as caught:
        build_config({"apiToken": "t", "channelId": 1, "store": "sqlite:////tmp/x.db", "httpListen": "x:1"})
    assert [p.key for p in caught.value.problems] == ["writeKeys"]


def test_write_keys_come_from_env_or_a_file_and_check_config_masks_them(tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text(f"# the web app\n{WRITE_KEY}\n\n{OTHER_KEY}\n")
    base = {"TRENGO_API_TOKEN": "t", "TRENGO_CHANNEL_ID": "1", "SIDECAR_STORE": f"sqlite:///{tmp_path}/s.db",
            "SIDECAR_HTTP_LISTEN": "127.0.0.1:8088"}  # fmt: skip
    from_env = load(env={**base, "SIDECAR_WRITE_KEYS": f" {WRITE_KEY} , {OTHER_KEY}"})
    from_file = load(env={**base, "SIDECAR_WRITE_KEYS_FILE": str(keys)})
    for loaded in (from_env, from_file):
        assert [k.reveal() for k in loaded.config.write_keys] == [WRITE_KEY, OTHER_KEY]
        report = check_config(loaded)
        assert "httpListen: 127.0.0.1:8088" in report
        assert not any(piece in report for piece in pieces(WRITE_KEY) + pieces(OTHER_KEY)), report
    assert "writeKeys:  # env SIDECAR_WRITE_KEYS\n- '****'\n- '****'" in check_config(from_env)
    assert f"writeKeysFile: {keys}" in check_config(from_file)
    flag = subprocess.run(
        [sys.executable, "-m", "sidecar", "--http-listen", "127.0.0.1:9", "--check-config"],
        cwd=ROOT, env=cli_env(**{k: v for k, v in base.items() if k != "SIDECAR_HTTP_LISTEN"},
                              SIDECAR_WRITE_KEYS=WRITE_KEY),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert flag.returncode == 0, flag.stderr
    assert "httpListen: 127.0.0.1:9  # flag --http-listen" in flag.stdout
    assert WRITE_KEY not in flag.stdout + flag.stderr


def test_the_listener_is_off_unless_http_listen_is_set(make_sidecar, tmp_path: Path):
    thread = make_sidecar(store=f"sqlite:///{tmp_path}/state.db")
    assert thread.sidecar.ingest is None


def test_each_request_logs_one_line_with_the_key_index(start: Start, control, caplog):
    caplog.set_level(logging.INFO, logger="sidecar.http")
    thread = start()
    post(url_of(thread), "batch", {"batch": [identify(1)]}, key=OTHER_KEY)
    wait_for(lambda: "http ingest" in caplog.text, "the request's log line")
    [line] = [r for r in caplog.records if r.name == "sidecar.http"]
    fields = line.fields  # type: ignore[attr-defined]
    assert (fields["route"], fields["status"], fields["key"], fields["accepted"]) == (
        "/v1/batch",
        200,
        "#1",
        1,
    )
    assert fields["bytes"] == len(json.dumps({"batch": [identify(1)]}))

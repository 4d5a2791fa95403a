"""Bounded cost per request (issue 22): Deliver ids, fields per event, Unicode format characters,
subjects that build only what they use, a private SQLite file, Trengo answers of bounded size.

Real sidecars (a process where memory is measured), the simulator as Trengo; each refusal is
INVALID_ARGUMENT naming the field, and the simulator shows nothing was sent.
"""

from __future__ import annotations

import asyncio
import stat
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

from sidecar.plan.templates import compile_template, properties_string, render_subject
from sidecar.trengo_api.transport import MAX_ANSWER_BYTES
from tests.support.fleet import ROOT, SERVICE, SERVING, wait_for
from tests.support.grpc_helpers import failure, health_status
from tests.support.harness import EMAIL_CHANNEL, TEMPLATES, TOKEN, cli_env, free_port, struct
from tests.support.scripted_server import Server, client, ok
from trengo.sidecar.v1 import sidecar_pb2 as pb
from trengo.sidecar.v1 import sidecar_pb2_grpc as pb_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def track(message_id: str = "", **properties: Any) -> pb.TrackRequest:
    return pb.TrackRequest(
        event="Checked Out", message_id=message_id, properties=struct(properties),
        context=struct({"traits": {"email": "ann@example.com"}}),
    )  # fmt: skip


def wide_track(fields: int, size: int = 1) -> pb.TrackRequest:
    request = pb.TrackRequest(event="Checked Out", context=struct({"traits": {"email": "ann@example.com"}}))
    for i in range(fields):
        request.properties.fields[f"k{i:06d}"].string_value = "v" * size
    return request


# --- a sidecar process, to measure its memory ----------------------------------------------------------


@pytest.fixture
def process(sim, tmp_path: Path) -> Iterator[tuple[pb_grpc.TrengoSidecarStub, int]]:
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "apiToken": TOKEN, "baseUrl": sim.base_url, "channelId": EMAIL_CHANNEL, "eventTemplateMap": TEMPLATES,
        "listen": f"127.0.0.1:{port}", "rateLimitPerMinute": 0, "shutdownGraceSeconds": 1,
    }))  # fmt: skip
    log = tmp_path / "sidecar.log"
    with log.open("wb") as err:
        popen = subprocess.Popen([sys.executable, "-m", "sidecar", "--config", str(config)], cwd=ROOT,
                                 env={**cli_env(), **RETURN_FREED},
                                 stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_for(lambda: health_status(f"127.0.0.1:{port}", SERVICE) == SERVING, "the sidecar to serve")
        yield pb_grpc.TrengoSidecarStub(channel), popen.pid
    finally:
        channel.close()
        popen.terminate()
        popen.wait(20)


# Why the RSS growth flaked (+25.8 MB, +43 MB under load; +8 MB alone): each 1 MB request is held
# for a moment as grpc's buffer, a bytes object, the parsed message and its id as a str. glibc
# raises its mmap threshold to the size of the first large block freed, so from then on these
# blocks come from the heap arenas and, freed, stay in them: RSS then shows the busiest instant
# (how many requests grpc had buffered while a loaded machine starved the event loop), not what
# the sidecar keeps. A fixed threshold (glibc's default, 128 KiB) maps every large block on its
# own and unmaps it when freed, so RSS counts the large blocks still held: an id kept per request
# (the defect this guards against) still adds 1 MB each.
RETURN_FREED = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_300_deliver_requests_with_1_mb_ids_are_refused_and_cost_little_memory(process, control):
    stub, pid = process
    warm = [pb.DeliverRequest(id=f"warm-{i}", track=track()) for i in range(20)]
    list(stub.Deliver(iter(warm), timeout=30))  # the process has done its first allocations
    before = rss_kib(pid)
    sent = control.requests()

    def requests() -> Iterator[pb.DeliverRequest]:
        for i in range(300):
            yield pb.DeliverRequest(id=f"{i:04d}" + "x" * (1024 * 1024), track=track())

    answers = list(stub.Deliver(requests(), timeout=120))
    grown = rss_kib(pid) - before
    assert len(answers) == 300
    assert {(a.error.code, a.error.field) for a in answers} == {(INVALID, "id")}
    assert "over 256" in answers[0].error.message
    assert max(len(a.id) for a in answers) == 256  # the echo is cut, not 1 MB again
    assert control.requests() == sent  # nothing reached Trengo
    assert grown < 20 * 1024, f"RSS grew {grown} KiB"


def test_an_event_past_max_event_fields_is_refused_naming_the_count(make_sidecar, control, ann):
    sidecar = make_sidecar()
    channel, stub = sidecar.stub()
    with channel:
        at_cap = wide_track(10_000 - 2)  # + context.traits + its email: 10,000 values
        assert stub.Track(at_cap, timeout=60).action
        for request in (wide_track(10_000 - 1), wide_track(20_000)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Track(request, timeout=60)
            found = failure(caught.value)
            # the field where the count ran over, in wire order: context is sent before properties
            assert found.code == grpc.StatusCode.INVALID_ARGUMENT and found.field in ("properties", "context")
            assert "more than 10000 fields" in found.message and "maxEventFields" in found.message
        item = pb.DeliverRequest(id="wide", track=wide_track(20_000))
        [answer] = list(stub.Deliver(iter([item]), timeout=60))
        assert (answer.id, answer.error.code, answer.error.field) == ("wide", INVALID, "track.properties")
    assert len(control.tickets()) == 1  # the one at the cap


def test_max_event_fields_is_a_config_key(make_sidecar, control, ann):
    sidecar = make_sidecar(maxEventFields=5)
    channel, stub = sidecar.stub()
    with channel:
        assert stub.Track(track(a=1, b=2, c=3), timeout=10).action  # 3 + traits + email = 5
        with pytest.raises(grpc.RpcError) as caught:
            stub.Track(track(a=1, b=2, c=3, d=4), timeout=10)
    assert "more than 5 fields" in failure(caught.value).message


def test_eight_wide_requests_in_flight_leave_health_answering(make_sidecar, ann):
    """Behaviour, not a figure (make bench reports that): wide requests are decoded off the loop,
    so a health Check is answered while they are."""
    sidecar = make_sidecar()
    channel, stub = sidecar.stub()
    wide = wide_track(9_990, size=400)  # about 4 MB, under maxEventFields
    with channel:
        calls = [stub.Track.future(wide, timeout=120) for _ in range(8)]
        statuses = [health_status(sidecar.address, SERVICE) for _ in range(5)]
        for call in calls:
            assert call.result().action
    assert set(statuses) == {SERVING}


@pytest.mark.parametrize("char", ["\u202e", "\u200b", "\u2066", "\ufeff"])
@pytest.mark.parametrize("where", ["traits.name", "traits.email", "user_id", "context.traits.phone"])
def test_unicode_format_characters_in_names_and_ids_are_refused(stub, control, char, where):
    traits: dict[str, Any] = {"email": "a@b.co", "name": "Ann"}
    request = pb.IdentifyRequest(user_id="u1")
    if where == "user_id":
        request.user_id = f"u{char}1"
    elif where == "context.traits.phone":
        request.context.CopyFrom(struct({"traits": {"phone": f"+3161234{char}5678"}}))
        traits = {}
    else:
        key = where.split(".")[1]
        traits[key] = traits[key][:1] + char + traits[key][1:]
    request.traits.CopyFrom(struct(traits))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Identify(request, timeout=10)
    found = failure(caught.value)
    assert (found.code, found.field) == (grpc.StatusCode.INVALID_ARGUMENT, where), found
    assert f"U+{ord(char):04X}" in found.message
    assert control.requests() == []


def test_a_template_builds_the_properties_string_only_when_it_may_read_it():
    properties = {"revenue": 30, "currency": "EUR", "items": [1, 2], "nested": {"a": 1}}
    sources = ["{{ event }} from our store", "Product was of value:{{ revenue }}", "{{ properties }}",
               "{{#each this}}{{@key}} {{/each}}", "{{ @root.properties }}", "{{[properties]}}", "{{ . }}",
               "{{#with nested}}{{../properties}}{{/with}}"]  # fmt: skip
    for source in sources:
        template = compile_template(source)
        eager = template.render({"event": "E", "properties": properties_string(properties), **properties})
        assert render_subject(template, "E", properties) == eager.strip(), source
    assert not compile_template("{{ event }} from our store").uses_properties
    assert compile_template("{{ properties }}").uses_properties


def test_the_sqlite_file_is_created_private(make_sidecar, tmp_path: Path):
    path = tmp_path / "state.db"
    sidecar = make_sidecar(store=f"sqlite:///{path}")
    channel, stub = sidecar.stub()
    with channel:
        ann = struct({"email": "a@b.co", "name": "Ann"})
        stub.Identify(pb.IdentifyRequest(user_id="u", traits=ann), timeout=10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for extra in tmp_path.glob("state.db-*"):
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra
    assert stat.S_IMODE((tmp_path / "state.db.locks").stat().st_mode) == 0o700


# --- Trengo's answers --------------------------------------------------------------------------------


def test_an_answer_over_10_mb_is_refused_without_reading_it():
    big = b"x" * (MAX_ANSWER_BYTES + 1)

    async def declared(writer: asyncio.StreamWriter) -> None:  # says its size first
        writer.write(ok(big)[: -len(big)])
        await writer.drain()

    async def chunked(writer: asyncio.StreamWriter) -> None:  # no size said: counted as it comes
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(12):
            part = b"x" * (1024 * 1024)
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()

    async def test() -> None:
        async with Server([declared, chunked, ok()]) as server, client(server) as http:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(httpx.RemoteProtocolError, match="over 10 MB"):
                    await http.get("/contacts")
                assert time.monotonic() - started < 30
            assert (await http.get("/contacts")).json() == {"id": 1}  # on a fresh connection
        assert server.connections >= 2

    asyncio.run(test())

    assert MAX_ANSWER_BYTES == 10 * 1024 * 1024

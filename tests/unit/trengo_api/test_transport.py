"""sidecar/trengo_api/transport.py under httpx: keep-alive, framing, failures mapped to httpx's exceptions,
TLS, proxies.

Each test scripts a real TCP server on 127.0.0.1 (what it answers to each request it reads) and checks
what that server saw: connections opened, requests received, connections open at once.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.config.load import Secret
from sidecar.deadline import Deadline
from sidecar.errors import Unavailable
from sidecar.plan import transform as tf
from sidecar.trengo_api import transport
from sidecar.trengo_api.answers import OutcomeUnknown
from sidecar.trengo_api.client import TrengoClient, _wire
from sidecar.trengo_api.transport import H11Transport
from tests.support.harness import TOKEN
from tests.support.scripted_server import (
    DROP,
    Reply,
    Server,
    client,
    ok,
)
from tests.support.tls import make_ca, make_cert


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(test())




def then_close(reply: bytes) -> Reply:
    """Answer, then close the connection (as a server that said "Connection: close" or spoke HTTP/1.0)."""

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(reply)
        await writer.drain()
        writer.close()

    return answer


def test_one_connection_carries_sequential_requests():
    async def test() -> None:
        async with Server([ok(), ok(), ok()]) as server, client(server) as http:
            for _ in range(3):
                assert (await http.post("/tickets", json={"a": 1})).json() == {"id": 1}
        assert server.connections == 1 and len(server.requests) == 3
        assert server.requests[0].startswith(b"POST /tickets HTTP/1.1\r\n")
        assert server.requests[0].endswith(b'{"a":1}') and b"content-length: 7" in server.requests[0].lower()

    run(test)


def test_a_kept_alive_connection_the_server_closed_is_not_reused():
    async def test() -> None:
        # closed without saying "Connection: close": the client learns it from the socket
        async with Server([then_close(ok()), ok()]) as server, client(server) as http:
            assert (await http.get("/a")).status_code == 200
            await asyncio.sleep(0.05)  # the close reaches the client's idle connection
            assert (await http.post("/b", json={})).status_code == 200  # sent once, on a new connection
        assert server.connections == 2 and len(server.requests) == 2

    run(test)


def test_connection_close_and_http_1_0_answers_end_the_connection():
    async def test() -> None:
        closing = ok(b"{}", "Connection: close")
        old = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}"
        async with Server([then_close(closing), then_close(old), ok()]) as server, client(server) as http:
            for _ in range(3):
                assert (await http.get("/")).json() in ({}, {"id": 1})
        assert server.connections == 3

    run(test)


def test_chunked_gzip_and_interim_answers_are_read_as_httpx_would():
    async def test() -> None:
        packed = gzip.compress(b'{"id": 7}')
        chunked = (
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(packed[:5]):x}\r\n".encode() + packed[:5] + b"\r\n"
            + f"{len(packed[5:]):x}\r\n".encode() + packed[5:] + b"\r\n0\r\n\r\n"
        )  # fmt: skip
        async with Server([chunked, ok()]) as server, client(server) as http:
            answer = await http.post("/tickets", json={})
            assert answer.status_code == 201 and answer.json() == {"id": 7}
            assert answer.reason_phrase == "Created"
            assert (await http.get("/")).status_code == 200
        assert server.connections == 1  # the chunked answer ended cleanly: the connection went on

    run(test)


def test_a_bogus_content_encoding_is_httpx_decoding_error():
    async def test() -> None:
        async with Server([ok(b"not gzip", "Content-Encoding: gzip")]) as server, client(server) as http:
            with pytest.raises(httpx.DecodingError):
                await http.get("/")

    run(test)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (DROP, httpx.RemoteProtocolError),  # read the request, closed without a word
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{", httpx.RemoteProtocolError),  # cut off
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError),
    ],
)
def test_failures_after_the_request_went_out_are_never_connect_errors(reply, error):
    async def test() -> None:
        async with Server([then_close(reply) if reply else DROP]) as server, client(server) as http:
            with pytest.raises(error) as caught:
                await http.post("/tickets", json={"x": 1})
            assert not isinstance(caught.value, httpx.ConnectError)
        assert len(server.requests) == 1  # it did arrive: a resend could write twice

    run(test)


def test_a_refused_connection_is_a_connect_error():
    async def test() -> None:
        async with Server([]) as server:
            url = server.url
        async with httpx.AsyncClient(base_url=url, transport=H11Transport(2)) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/")

    run(test)


def test_a_slow_answer_is_a_read_timeout_and_its_connection_is_dropped():
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)

    async def test() -> None:
        async with Server([slow, ok()]) as server, client(server, timeout=0.1) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/slow")
            assert (await http.get("/next")).status_code == 200
        assert server.connections == 2

    run(test)


def test_no_more_connections_than_the_pool_allows():
    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(ok())

    async def test() -> None:
        async with Server([slow] * 8) as server, client(server, connections=2) as http:
            answers = await asyncio.gather(*(http.get(f"/{i}") for i in range(8)))
        assert [a.status_code for a in answers] == [200] * 8
        assert server.peak == 2 and len(server.requests) == 8

    run(test)


def test_a_stale_answer_on_an_idle_connection_is_not_taken_for_the_next_one():
    """Some servers say 408 as they drop an idle connection: that is not the answer to the next request."""

    async def answer_then_408(writer: asyncio.StreamWriter) -> None:
        writer.write(ok())
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def test() -> None:
        async with Server([answer_then_408, ok(b'{"id": 2}')]) as server, client(server) as http:
            await http.get("/a")
            await asyncio.sleep(0.1)  # the 408 and the close arrive, and the loop reads them
            answer = await http.post("/tickets", json={})
            assert answer.status_code == 200 and answer.json() == {"id": 2}
        assert server.connections == 2 and len(server.requests) == 2

    run(test)


def test_a_close_the_event_loop_has_not_seen_yet_still_keeps_the_connection_out():
    """The server closes an idle connection while the client's event loop is busy: the socket says so."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[bytes] = []

    def serve() -> None:
        for close_after in (True, False):
            conn, _ = listener.accept()
            with conn:
                seen.append(conn.recv(65536))
                conn.sendall(ok())
                if close_after:
                    continue  # closed at once, while the client keeps its loop busy
                time.sleep(0.5)
        listener.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def test() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=H11Transport(2)) as http:
            await http.get("/a")
            time.sleep(0.1)  # blocks the loop: the close is on the socket, not yet in the loop
            assert (await http.post("/tickets", json={})).status_code == 200

    run(test)
    server.join(5)
    assert [request.split(b" ")[0] for request in seen] == [b"GET", b"POST"]


def test_a_connection_idle_past_the_keepalive_limit_is_not_trusted(monkeypatch):
    monkeypatch.setattr(transport, "KEEPALIVE_SECONDS", 0.05)

    async def test() -> None:
        async with Server([ok(), ok()]) as server, client(server) as http:
            await http.get("/a")
            await asyncio.sleep(0.1)
            await http.get("/b")
        assert server.connections == 2

    run(test)


def test_https_with_a_ca_from_ssl_cert_file(tmp_path: Path, monkeypatch):
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "server", "ca", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.crt"))

    async def test() -> None:
        async with Server([ok(), ok()], tls=tls) as server, client(server) as http:
            assert (await http.get("/a")).json() == {"id": 1}
            assert (await http.get("/b")).status_code == 200
        assert server.connections == 1

    run(test)


def test_an_untrusted_certificate_is_a_connect_error(tmp_path: Path):
    make_ca(tmp_path, "ca")
    make_cert(tmp_path, "server", "ca", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")

    async def test() -> None:
        async with Server([ok()], tls=tls) as server, client(server) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get("/")
        assert not server.requests

    run(test)


@pytest.mark.parametrize(
    ("env", "proxied"),
    [
        ({}, False),
        ({"HTTPS_PROXY": "http://proxy.internal:3128"}, True),
        ({"ALL_PROXY": "http://proxy.internal:3128"}, True),
        ({"HTTPS_PROXY": "http://proxy.internal:3128", "NO_PROXY": "app.trengo.com"}, False),
        ({"HTTP_PROXY": "http://proxy.internal:3128"}, False),  # Trengo is https
        ({"HTTPS_PROXY": "proxy.internal:3128"}, True),  # no scheme: http://, as httpx reads it
    ],
)
def test_a_proxy_for_trengo_hands_the_wire_to_httpx(monkeypatch, env, proxied):
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    wire = _wire("https://app.trengo.com/api/v2", 4)
    assert isinstance(wire, httpx.AsyncHTTPTransport if proxied else H11Transport)
    asyncio.run(wire.aclose())


class ForwardProxy:
    """An HTTP forward proxy: reads an absolute-form request, sends it on (Connection: close), pipes back."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []  # request lines, as the client sent them to the proxy

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            writer.close()
            return
        first, *rest = head.split(b"\r\n")
        method, target, version = first.split(b" ")
        self.seen.append(first)
        url = httpx.URL(target.decode())
        lines = [x for x in rest if x and not x.lower().startswith((b"connection", b"proxy-"))]
        length = next((int(x.split(b":")[1]) for x in lines if x.lower().startswith(b"content-length")), 0)
        body = await reader.readexactly(length)
        up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
        request_line = b" ".join([method, url.raw_path, version])
        up_writer.write(b"\r\n".join([request_line, *lines, b"Connection: close"]) + b"\r\n\r\n" + body)
        writer.write(await up_reader.read())  # until the upstream closes
        await writer.drain()
        up_writer.close()
        writer.close()


def test_through_a_proxy_from_the_environment_trengo_gets_the_call(sim, control, monkeypatch):
    """HTTP_PROXY set: the call goes through it (httpx's transport), and Trengo gets it as usual."""
    for name in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)

    async def test() -> None:
        async with ForwardProxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            client = TrengoClient(sim.base_url, Secret(TOKEN), timeout=5)
            try:
                answer = await client.send(tf.list_channels(1), Deadline.after(5), [])
            finally:
                await client.aclose()
        assert [c["id"] for c in answer["data"]] and proxy.seen
        assert proxy.seen[0].startswith(b"GET " + sim.base_url.encode() + b"/channels?page=1 ")

    run(test)
    assert [r["path"] for r in control.requests()] == ["/api/v2/channels"]


def test_a_ticket_that_never_got_a_connection_before_its_deadline_may_be_sent_again():
    """All connections busy until the deadline: nothing was sent, so no unknown outcome (which would be
    remembered under the message_id), but a plain UNAVAILABLE the caller can retry."""

    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.6)
        writer.write(ok(b'{"id": 1}'))

    async def test() -> None:
        async with Server([slow]) as server:
            trengo = TrengoClient(server.url, Secret(TOKEN), timeout=5, max_connections=1)
            try:
                first = asyncio.create_task(trengo.send(tf.create_ticket(1, 2, "a"), Deadline.after(5), []))
                await asyncio.sleep(0.05)  # the first holds the only connection
                with pytest.raises(Unavailable) as caught:
                    await trengo.send(tf.create_ticket(1, 2, "b"), Deadline.after(0.35), [])
                assert not isinstance(caught.value, OutcomeUnknown), caught.value
                assert caught.value.retry_after is not None
                assert (await first)["id"] == 1
            finally:
                await trengo.aclose()
        assert len(server.requests) == 1

    run(test)

"""The wire under the httpx client: HTTP/1.1 by h11 over asyncio streams, a pool of kept-alive connections.

Why not httpx's own transport (httpcore): the sidecar sits in its callers' request path, and on the
2-core benchmark machines httpcore's per-request machinery (pool bookkeeping, anyio cancel scopes,
events and locks per request) costs about half a millisecond of latency per Trengo call once a gRPC
call drives it. A bare grpc.aio server relaying one POST per call, p50 at 1 in flight: 1.96 ms through
httpx's default transport, 1.70 ms through httpcore alone, 1.11 ms through h11 over asyncio streams,
1.00 ms with no HTTP library at all. h11 is the HTTP/1.1 parser httpcore itself uses; httpx's Request,
Response, decoders and exceptions stay. Failures are mapped to httpx's exceptions
exactly: only a failure before a byte of the request left is a ConnectError/ConnectTimeout/PoolTimeout
(safe to resend); everything after is a ReadError, WriteError, RemoteProtocolError or ReadTimeout.
"""

from __future__ import annotations

import asyncio
import select
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
import httpx

# Set on a request until its first byte is written: a caller that cancels it (a deadline) can tell an
# unsent request, safe to send again, from one the server may have received.
UNSENT = "trengo_sidecar.unsent"
KEEPALIVE_SECONDS = 5.0  # httpx's own keepalive_expiry: a connection idle longer is not trusted
READ_BYTES = 65_536
# Trengo's answers are a few kB (a page of contacts: 25 of them). One larger than this is not an
# answer the sidecar can use, and reading it whole would let one misbehaving server (or whoever sits
# on an http:// path) fill the sidecar's memory: refused as a broken answer, its connection closed.
MAX_ANSWER_BYTES = 10 * 1024 * 1024


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0

    def reusable(self, now: float) -> bool:
        """Still open, its last exchange complete, not idle too long, and nothing unasked-for waiting.

        The last test looks at the socket itself, as httpcore does: a close or a stray answer (some
        servers send 408 as they drop an idle connection) that the event loop has not read yet would
        otherwise be taken for the answer to the next request, or fail it after it was sent.
        """
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and self.protocol.our_state is h11.IDLE
            and now - self.idle_since < KEEPALIVE_SECONDS
            and not self.protocol.trailing_data[0]
            # bytes the loop read that nobody asked for (StreamReader has no public way to tell)
            and not getattr(self.reader, "_buffer", b"")
            and not _readable(self.writer)
        )

    def close(self) -> None:
        self.writer.close()


def _readable(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    try:
        return bool(select.select([sock.fileno()], [], [], 0)[0])
    except (OSError, ValueError):  # closed under us: not reusable either
        return True


class _Body(httpx.AsyncByteStream):
    """The whole answer body, already read (Trengo's answers are small JSON documents)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class H11Transport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl = ssl_context
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        request.extensions[UNSENT] = True
        await self._acquire(request, timeouts.get("pool"))
        origin = _origin(request.url)
        try:
            connection = await self._connection(request, origin, timeouts.get("connect"))
            try:
                response = await self._exchange(connection, request, timeouts)
            except BaseException:  # a failure or a cancellation mid-exchange: the connection is spent
                connection.close()
                raise
            self._release(origin, connection)
            return response
        finally:
            self._slots.release()

    async def _acquire(self, request: httpx.Request, timeout: float | None) -> None:
        if not self._slots.locked():  # a free slot: no timer to arm (one less per call)
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection in time", request=request) from None

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    # --- connections ------------------------------------------------------------

    async def _connection(
        self, request: httpx.Request, origin: tuple[str, str, int], timeout: float | None
    ) -> _Connection:
        idle = self._idle.get(origin, [])
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be closed by now
            if connection.reusable(now):
                return connection
            connection.close()
        url = request.url
        tls = self._tls() if url.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    url.host, url.port or (443 if tls else 80), ssl=tls, limit=READ_BYTES
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect to {url.host} in time", request=request) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"could not connect to {url.host}: {exc}", request=request) from exc
        return _Connection(reader, writer)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # certifi's roots, SSL_CERT_FILE/SSL_CERT_DIR honoured
        return self._ssl

    def _release(self, origin: tuple[str, str, int], connection: _Connection) -> None:
        protocol = connection.protocol
        if self._closed or protocol.our_state is not h11.DONE or protocol.their_state is not h11.DONE:
            connection.close()  # Connection: close, HTTP/1.0, or an answer that ended the connection
            return
        protocol.start_next_cycle()
        connection.idle_since = now = time.monotonic()
        idle = self._idle.setdefault(origin, [])
        while idle and now - idle[0].idle_since >= KEEPALIVE_SECONDS:  # the least recently used first
            idle.pop(0).close()
        idle.append(connection)

    # --- one exchange -----------------------------------------------------------

    async def _exchange(
        self, connection: _Connection, request: httpx.Request, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        protocol = connection.protocol
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        target = request.url.raw_path
        try:
            head = h11.Request(method=request.method, target=target, headers=request.headers.raw)
            data = protocol.send(head) + (protocol.send(h11.Data(data=body)) if body else b"")
            data += protocol.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(f"the request cannot be sent: {exc}", request=request) from exc
        request.extensions.pop(UNSENT, None)  # from here on, bytes may reach the server
        await self._write(connection, data, request, timeouts.get("write"))
        try:
            async with asyncio.timeout(timeouts.get("read")):
                answer = await self._next(connection, request)
                if not isinstance(answer, h11.Response):
                    unexpected = f"{type(answer).__name__} before the answer"
                    raise httpx.RemoteProtocolError(unexpected, request=request)
                _refuse_if_too_large(_declared_length(answer), request)
                chunks: list[bytes] = []
                size = 0
                while not isinstance(event := await self._next(connection, request), h11.EndOfMessage):
                    if isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                        size += len(event.data)
                        _refuse_if_too_large(size, request)
        except TimeoutError:
            raise httpx.ReadTimeout("no complete answer in time", request=request) from None
        return httpx.Response(
            answer.status_code,
            headers=answer.headers.raw_items(),
            stream=_Body(chunks),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": bytes(answer.reason)},
        )

    @staticmethod
    async def _write(
        connection: _Connection, data: bytes, request: httpx.Request, timeout: float | None
    ) -> None:
        writer = connection.writer
        try:
            writer.write(data)  # head and body in one segment
            if writer.transport.get_write_buffer_size():  # the kernel did not take it all: wait, bounded
                async with asyncio.timeout(timeout):
                    await writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("the request could not be written in time", request=request) from None
        except OSError as exc:
            raise httpx.WriteError(f"the connection broke while writing: {exc}", request=request) from exc

    @staticmethod
    async def _next(connection: _Connection, request: httpx.Request) -> h11.Event:
        """The next event of the answer (interim 1xx answers skipped), reading as much as it needs."""
        protocol = connection.protocol
        while True:
            try:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    protocol.receive_data(await _read(connection, request))
                    continue
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"a malformed answer: {exc}", request=request) from exc
            if isinstance(event, h11.InformationalResponse):
                continue
            if not isinstance(event, h11.Event) or isinstance(event, h11.ConnectionClosed):
                closed = "the server closed the connection without an answer"
                raise httpx.RemoteProtocolError(closed, request=request)
            return event


def _declared_length(answer: h11.Response) -> int:
    for name, value in answer.headers:
        if name == b"content-length" and value.strip().isdigit():
            return int(value)
    return 0


def _refuse_if_too_large(size: int, request: httpx.Request) -> None:
    if size > MAX_ANSWER_BYTES:
        too_large = f"the answer is over {MAX_ANSWER_BYTES // (1024 * 1024)} MB: refused, not read"
        raise httpx.RemoteProtocolError(too_large, request=request)


async def _read(connection: _Connection, request: httpx.Request) -> bytes:
    try:
        return await connection.reader.read(READ_BYTES)
    except OSError as exc:
        raise httpx.ReadError(f"the connection broke: {exc}", request=request) from exc


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)

"""The HTTP listener (``httpListen``): aiohttp on the sidecar's own event loop, in front of the queue.

aiohttp because it is already a dependency (the simulator), is well kept, and runs on the asyncio loop
the grpc.aio server uses, so a request and the queue's commit share one loop and no thread hops.

Routes are rudder-server's gateway's: POST /v1/batch and the single-event /v1/identify, /v1/track,
/v1/page, /v1/screen, /v1/group and /v1/alias. The status codes are the contract the SDKs retry by:
200 only once every event is committed (or needs no commit); 503 with Retry-After when the store
cannot commit, or the queue is full (QUEUE_FULL: past queueMaxDepth or queueMaxBytes, nothing written;
they keep the batch and retry); 400, 401 and 413 are never retried, and nothing of
such a request is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ...config.load import Config
from ...delivery.delivery import Delivery
from ...errors import SidecarError, Unavailable
from ...observe import tracing as tracing_module
from ...queue.store import QueueFull
from ..queue_service import QueueService
from .accept import Answer, answer, decide
from .body import MAX_BODY_BYTES, SINGLE_ROUTES, BadBody, parse, too_large
from .keys import WriteKeys, basic_user

log = logging.getLogger("sidecar.http")
ROUTES = ("batch", *SINGLE_ROUTES)
THREAD_PARSE_BYTES = 256 * 1024  # bigger bodies are inflated and parsed off the event loop
YIELD_EVERY = 10  # events decided between two passes through the event loop
REALM = 'Basic realm="trengo-sidecar"'
CODES = {400: "INVALID_BODY", 401: "WRITE_KEY_INVALID", 413: "BODY_TOO_LARGE"}


@dataclass(slots=True)
class Handled:
    """One request as the log line, the metrics and the span tell it (never the key: its index)."""

    route: str
    status: int = 200
    key: str = "none"
    body_bytes: int = 0
    answer: Answer | None = None
    error: str = ""


class HttpIngest:
    """The listener's life cycle and its one handler."""

    def __init__(self, config: Config, delivery: Delivery, queue: QueueService) -> None:
        self.config = config
        self.delivery = delivery
        self.queue = queue
        self.keys = WriteKeys(config.write_keys)
        self.tracing: Any = None  # the sidecar's Tracing, when on
        self.observer: Any = None  # IngestMetrics (sidecar/ingest/metrics.py), when metrics are served
        self.port = 0
        self._runner: web.AppRunner | None = None

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen on httpListen; the port bound (useful for port 0)."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/{route:batch|identify|track|page|screen|group|alias}", self.handle)
        # access_log None: this module logs each request itself, and never a header.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=self.config.shutdown_grace_seconds)  # fmt: skip
        await self._runner.setup()
        host, _, port = self.config.http_listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]") or None, int(port), reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            where = self.config.http_listen
            raise OSError(f"httpListen {where}: cannot listen there: {exc.strerror}") from None
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop listening; requests in flight finish (their commit and answer) within the grace."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the handler -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        done = Handled(request.match_info["route"])
        with self._span(request, done):
            response = await self._answer(request, done)
        self._report(done, time.monotonic() - started)
        return response

    async def _answer(self, request: web.Request, done: Handled) -> web.Response:
        header_key = basic_user(request.headers.get("Authorization"))
        if header_key is not None and not self._known(header_key, done):
            return self._refused(done)
        try:
            body = await self._body(request, done)
        except BadBody as exc:
            return self._error(done, exc.status, CODES[exc.status], exc.message, exc.field)
        if header_key is None and not self._known(body.write_key, done):
            return self._refused(done)
        carrier = (tracing_module.carrier() or None) if self.tracing is not None else None
        decisions = []
        for i, raw in enumerate(body.events):
            if i and i % YIELD_EVERY == 0:
                # Through the loop now and then: a batch's checks (5-15 ms for 100 events) do not hold
                # up the gRPC calls and other requests that share the loop.
                await asyncio.sleep(0)
            decisions.append(decide(raw, i, self.config, self.delivery, carrier))
        jobs = [d.job for d in decisions if d.job is not None]
        try:
            stored = await self.queue.accept_many(jobs) if jobs else []
        except QueueFull as exc:  # past queueMaxDepth/queueMaxBytes, nothing written: the SDK keeps the batch
            retry = max(1, math.ceil(exc.retry_after or 1.0))
            return self._error(done, 503, exc.reason, exc.message, headers={"Retry-After": str(retry)})
        except Unavailable as exc:  # the store is down (STORE_UNAVAILABLE): the SDK keeps the batch
            retry = max(1, math.ceil(exc.retry_after or 1.0))
            return self._error(done, 503, exc.reason, exc.message, headers={"Retry-After": str(retry)})
        except SidecarError as exc:  # no durable store: refused at start, so not expected here
            return self._error(done, 503, exc.reason, exc.message, headers={"Retry-After": "5"})
        done.answer = answer(decisions, stored)
        return web.json_response(done.answer.body())

    def _known(self, given: str | None, done: Handled) -> bool:
        index = self.keys.match(given)
        if index is not None:
            done.key = f"#{index}"
        return index is not None

    def _refused(self, done: Handled) -> web.Response:
        message = "a valid write key is required: HTTP Basic auth with the key as user name, or writeKey"
        return self._error(done, 401, CODES[401], message, headers={"WWW-Authenticate": REALM})

    async def _body(self, request: web.Request, done: Handled) -> Any:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise too_large()
        try:
            raw = await request.read()  # inflated as read (Content-Encoding), up to client_max_size
        except web.HTTPRequestEntityTooLarge:
            raise too_large() from None
        except web.RequestPayloadError:  # a body that is not the gzip (or deflate...) it says it is
            encoding = request.headers.get("Content-Encoding", "")[:20]
            raise BadBody(400, f"the body cannot be read as Content-Encoding {encoding!r}") from None
        done.body_bytes = len(raw)
        if len(raw) > THREAD_PARSE_BYTES:
            return await asyncio.to_thread(parse, raw, done.route)
        return parse(raw, done.route)

    def _error(
        self,
        done: Handled,
        status: int,
        code: str,
        message: str,
        field: str = "",
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """A refusal as the SDKs read one: {"code", "message"} (rudder-sdk-python raises KeyError
        without them), plus the field when one is to blame."""
        done.status, done.error = status, message
        body: dict[str, Any] = {"code": code, "message": message}
        if field:
            body["field"] = field
        return web.json_response(body, status=status, headers=headers)

    # --- what a request leaves behind: a log line, metrics, a span ---------------------------------

    @contextlib.contextmanager
    def _span(self, request: web.Request, done: Handled) -> Iterator[None]:
        if self.tracing is None:
            yield
            return
        parent = propagate.extract(request.headers)
        attributes = {"http.request.method": "POST", "http.route": f"/v1/{done.route}"}
        with self.tracing.tracer.start_as_current_span(
            f"POST /v1/{done.route}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            yield
            _describe(span, done)

    def _report(self, done: Handled, seconds: float) -> None:
        counts = done.answer.counts if done.answer is not None else {}
        fields = {"route": f"/v1/{done.route}", "status": done.status, "key": done.key,
                  "bytes": done.body_bytes, "ms": round(seconds * 1000, 1), **counts}  # fmt: skip
        if done.error:
            fields["error"] = done.error
        log.info("http ingest", extra={"fields": fields})
        if self.observer is not None:
            self.observer.request(done.route, done.status, seconds, done.body_bytes, counts)


def _describe(span: trace.Span, done: Handled) -> None:
    span.set_attribute("http.response.status_code", done.status)
    for outcome, count in done.answer.counts.items() if done.answer else ():
        span.set_attribute(f"trengo_sidecar.events.{outcome}", count)
    if done.status >= 400:
        span.set_attribute("error.type", str(done.status))
    if done.status >= 500:
        span.set_status(Status(StatusCode.ERROR))

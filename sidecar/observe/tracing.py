"""Traces over OpenTelemetry: a server span per RPC that continues the caller's trace, a child span per
Trengo call, and ``trace_id`` in the log lines.

Configured only by OpenTelemetry's standard environment variables, read by opentelemetry-sdk and its
OTLP/gRPC exporter: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns
tracing on; ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` (and ``_ARG``),
``OTEL_PROPAGATORS``, ``OTEL_EXPORTER_OTLP_HEADERS``/``_INSECURE``/``_CERTIFICATE``/``_TIMEOUT``/
``_COMPRESSION`` and ``OTEL_BSP_*`` shape it; ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``
turn it off again.

Off (the default), nothing here runs per call: the server registers its handlers unwrapped, the Trengo
client's hook is None and no log filter is installed. On, spans are batched and exported off the event
loop by the SDK's BatchSpanProcessor thread.

What a span carries is chosen, never copied from a request: the RPC's name and status code; for a
Trengo call its method, endpoint *template* (``/contacts/{id}``: no ids, no query, so no search term),
status, attempts, rate-limit wait and the error's reason. Never a URL, a header, a body or the token.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from ..errors import ConfigError, SidecarError
from .metrics import endpoint

if TYPE_CHECKING:
    from ..plan.transform import Call
    from ..trengo_api.records import CallRecord

DEFAULT_SERVICE_NAME = "trengo-sidecar"
SCOPE = "trengo_sidecar"
_PORTS = {"http": 80, "https": 443}
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_env(environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """A Tracing exporting over OTLP/gRPC, or None when the environment does not ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return None
    if not (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    if exporter != "otlp":
        raise ConfigError("OTEL_TRACES_EXPORTER", f"{exporter!r} is not supported: the sidecar exports otlp")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = protocol or "grpc"
    if protocol.strip().lower() != "grpc":
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            f"{protocol!r} is not supported: the sidecar exports OTLP over grpc (a collector's port 4317)",
        )
    # Imported only when on: the exporter pulls in more of grpc and protobuf than the sidecar needs.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=_resource())  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)


def export_endpoint(environ: Mapping[str, str] = os.environ) -> str:
    """Where spans go, as the start-up line says it: the OTLP endpoint, with no user or password in it
    (credentials go in OTEL_EXPORTER_OTLP_HEADERS, but a URL may carry some too)."""
    from urllib.parse import urlsplit, urlunsplit

    url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    url = (url or "").strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an endpoint that is not a URL; not shown)"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"****@{host}", parts.path, "", ""))


def _resource() -> Resource:
    resource = Resource.create({SERVICE_VERSION: _version()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trengo-sidecar")
    except PackageNotFoundError:
        return "unknown"


class Tracing:
    """One sidecar's tracer provider, and the hooks the server and the Trengo client call."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(SCOPE, _version())

    # --- the server: a span per RPC ----------------------------------------------------------

    def interceptor(self, service: str) -> grpc.aio.ServerInterceptor:
        """A server interceptor that runs each of ``service``'s calls inside a server span.

        Installed only when tracing is on, and first: a call another interceptor refuses (no
        ``authToken``) is traced too. Health and reflection calls are not traced.
        """
        return _ServerSpans(self, service)

    def wrap(self, service: str, method: str, handler: Any) -> Any:
        """``handler`` (a grpc.RpcMethodHandler) with its behaviour inside a server span."""
        name = f"{service}/{method}"
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(name, attributes, handler.unary_unary))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=self._stream(name, attributes, handler.stream_stream))
        return handler

    def _unary(
        self, name: str, attributes: dict[str, str], behavior: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._server_span(name, attributes, context) as span:
                try:
                    return await behavior(request, context)
                finally:
                    _end_rpc(span, context)

        return traced

    def _stream(
        self, name: str, attributes: dict[str, str], behavior: Callable[[Any, Any], AsyncIterator[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def traced(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # The span is current for the whole stream: the tasks it starts per event copy the context,
            # so their Trengo calls are its children.
            with self._server_span(name, attributes, context) as span:
                try:
                    async for answer in behavior(requests, context):
                        yield answer
                finally:
                    _end_rpc(span, context)

        return traced

    @contextmanager
    def _server_span(
        self, name: str, attributes: dict[str, str], context: grpc.aio.ServicerContext
    ) -> Iterator[trace.Span]:
        parent = propagate.extract(_carrier(context.invocation_metadata()))
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            yield span

    # --- the Trengo client: a span per call --------------------------------------------------

    def trengo_hook(self, base_url: str) -> Callable[[Call, CallRecord, float, BaseException | None], None]:
        """The TrengoClient's ``span_hook``: ``hook(call, record, started, error)`` once a call is over."""
        url = httpx.URL(base_url)
        return functools.partial(self.trengo_call, base=(url.host, url.port or _PORTS.get(url.scheme, 0)))

    def trengo_call(
        self,
        call: Call,
        record: CallRecord,
        started: float,
        error: BaseException | None,
        base: tuple[str, int],
    ) -> None:
        """A child of the current span for one Trengo call (all its attempts), made once it is over.

        ``started`` is the call's time.monotonic() start; ``error`` what the call raised, if anything.
        """
        now_ns, elapsed = time.time_ns(), time.monotonic() - started
        template = endpoint(call.path)
        attributes: dict[str, Any] = {
            "http.request.method": call.method,
            "url.template": template,
            "server.address": base[0],
            "server.port": base[1],
            "trengo_sidecar.attempts": record.attempts,
            "trengo_sidecar.rate_limit_wait_seconds": round(record.rate_limit_wait, 6),
        }
        if record.attempts > 1:
            attributes["http.request.resend_count"] = record.attempts - 1
        if record.status_code:
            attributes["http.response.status_code"] = record.status_code
        span = self.tracer.start_span(
            f"{call.method} {template}", kind=SpanKind.CLIENT, attributes=attributes,
            start_time=now_ns - int(elapsed * 1e9),
        )
        if error is not None:
            reason = error.reason if isinstance(error, SidecarError) else type(error).__name__
            span.set_attribute("error.type", reason)
            span.set_status(Status(StatusCode.ERROR))  # no description: messages may quote an identifier
        span.end(end_time=now_ns)

    # --- logs -------------------------------------------------------------------------------

    def install_log_filter(self, logger: logging.Logger) -> None:
        """Add ``trace_id`` (and ``span_id``) to the fields of every line the handlers write in a span."""
        for handler in logger.handlers:
            if not any(isinstance(f, TraceIdFilter) for f in handler.filters):
                handler.addFilter(TraceIdFilter())

    # --- queued deliveries ----------------------------------------------------------------------

    @contextmanager
    def linked_span(self, name: str, stored: Mapping[str, str]) -> Iterator[trace.Span]:
        """A span for delivering a queued event: a new trace, linked to the one that enqueued it.

        ``stored`` is what ``carrier()`` gave at Enqueue time. The delivery may run long after the
        Enqueue's trace ended, so it is not made a child of it; the Link lets a trace viewer jump back.
        Trengo calls made inside the ``with`` are this span's children.
        """
        enqueued = trace.get_current_span(propagate.extract(dict(stored))).get_span_context()
        links = [Link(enqueued)] if enqueued.is_valid else []
        with self.tracer.start_as_current_span(
            name, context=Context(), kind=SpanKind.CONSUMER, links=links
        ) as span:
            yield span

    def shutdown(self) -> None:
        """Export the spans still batched (bounded by OTEL_BSP_EXPORT_TIMEOUT), then stop."""
        self.provider.shutdown()


class _ServerSpans(grpc.aio.ServerInterceptor):
    def __init__(self, tracing: Tracing, service: str) -> None:
        self._tracing = tracing
        self._service = service
        self._prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self._prefix):
            return handler  # no such method (grpc answers UNIMPLEMENTED), or health and reflection
        return self._tracing.wrap(self._service, details.method[len(self._prefix) :], handler)


class TraceIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            fields = getattr(record, "fields", None) or {}
            record.fields = {**fields, "trace_id": f"{span.trace_id:032x}", "span_id": f"{span.span_id:016x}"}
        return True


def _carrier(metadata: Any) -> dict[str, str]:
    """The caller's metadata as a propagation carrier (gRPC metadata keys are already lower case)."""
    return {key: value for key, value in metadata or () if isinstance(value, str)}


def _end_rpc(span: trace.Span, context: grpc.aio.ServicerContext) -> None:
    code = context.code()  # set by abort(); None for a call that returned normally
    status = code if isinstance(code, grpc.StatusCode) else _GRPC_CODES.get(code or 0, grpc.StatusCode.OK)
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if status is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, status.name))
        span.set_attribute("error.type", _reason(context) or status.name)


def _reason(context: grpc.aio.ServicerContext) -> str | None:
    """The ErrorInfo reason of the rich status the call was aborted with (a constant such as
    EVENT_NOT_MAPPED, never the message), read back from its trailing metadata."""
    for key, value in context.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason or None
    return None


# --- queued deliveries: what to store with a queued event ------------------------------------


def carrier() -> dict[str, str]:
    """The current trace context (``traceparent``, ...) as a small dict, to store with a queued event.

    Empty when tracing is off or the call is not traced. ``Tracing.linked_span`` takes it back.
    """
    out: dict[str, str] = {}
    propagate.inject(out)
    return out

"""A local OTLP/gRPC trace receiver: the collector's TraceService, keeping what it is sent.

For tests and the benchmark (and a developer who wants to see the sidecar's spans without a
collector): ``python -m sidecar.simulator.otlp --port 4317`` prints each span as it arrives.
It is opentelemetry-proto's own service definition on a plain grpc server, so what it receives is
exactly what a real collector would.
"""

from __future__ import annotations

import argparse
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every ExportTraceServiceRequest (and its raw bytes, to search for what must not be there)."""

    def __init__(self, echo: bool = False) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.raw: list[bytes] = []
        self.echo = echo
        self._lock = threading.Lock()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(request)
            self.raw.append(request.SerializeToString())
        if self.echo:
            for span in spans(request):
                print(span_line(span), flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Any]:
        with self._lock:
            return [span for request in self.requests for span in spans(request)]

    def resources(self) -> list[dict[str, Any]]:
        with self._lock:
            return [attributes(rs.resource.attributes) for r in self.requests for rs in r.resource_spans]


def spans(request: Any) -> list[Any]:
    return [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def attributes(values: Any) -> dict[str, Any]:
    """OTLP KeyValues as a plain dict."""
    out: dict[str, Any] = {}
    for kv in values:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def span_line(span: Any) -> str:
    ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    parent = span.parent_span_id.hex() or "-"
    ids = f"{span.trace_id.hex()} {span.span_id.hex()} <- {parent}"
    return f"{ids} {span.name} {ms:.2f}ms {attributes(span.attributes)}"


def serve(port: int = 0, echo: bool = False) -> tuple[grpc.Server, Receiver, int]:
    """A receiver on 127.0.0.1:port (0: any free port), started: (server, receiver, port)."""
    receiver = Receiver(echo)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, receiver, bound


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=4317)
    args = parser.parse_args()
    server, _, port = serve(args.port, echo=True)
    print(f"OTLP/gRPC receiver on 127.0.0.1:{port}: OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{port}",
          flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()

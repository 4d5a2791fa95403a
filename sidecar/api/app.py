"""The running sidecar process: state, Trengo client, delivery, the grpc.aio server, health, TLS, shutdown.

Apart from server.py (the servicer: one request parsed, filtered, delivered and answered) because
building, binding, starting and stopping the process is a different job from answering a call.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trengo.sidecar.v1 import sidecar_pb2 as pb

from ..config.load import Config
from ..delivery.delivery import Delivery
from ..observe import tracing
from ..state import open_state, scope_of
from ..state.health import StoreHealth
from ..state.observed import ObservedState
from ..trengo_api.client import TrengoClient
from ..trengo_api.ratelimit import RateLimiter
from ..trengo_api.retry import RetryPolicy
from . import reflection
from .auth import AuthInterceptor
from .decoding import tolerant as _tolerant
from .decoding import transport_limit as _transport_limit
from .drain import CUT_OFF_SECONDS
from .ingest.server import HttpIngest
from .queue_service import QueueService, queue_connections
from .readiness import PROBES, Health, HealthServicer, Readiness
from .server import Servicer

log = logging.getLogger("sidecar")
SERVICE = pb.DESCRIPTOR.services_by_name["TrengoSidecar"].full_name


class Sidecar:
    """The running sidecar: gRPC server, Trengo client, delivery, health."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # The state, from config, given to those that use it (sidecar/state/: memory, SQLite, PostgreSQL).
        self.state = ObservedState(
            open_state(
                config.store.reveal(),
                pool_size=config.store_pool_size + queue_connections(config),
                contact_cache_size=config.contact_cache_size,
                result_cache_size=config.idempotency_cache_size,
            )
        )
        scope = scope_of(config.api_token.reveal())  # a hash of the token, never the token
        limiter = RateLimiter(
            config.rate_limit_per_minute,
            config.rate_limit_queue_size,
            self.state,
            key=scope,
            window=config.rate_limit_window_seconds,
        )
        self.client = TrengoClient(
            config.base_url,
            config.api_token,
            timeout=config.request_timeout_seconds,
            policy=RetryPolicy(config.max_attempts, config.backoff_base_seconds, config.backoff_max_seconds),
            limiter=limiter,
        )
        self.delivery = Delivery(config, self.client, self.state, scope)
        # The queue's RPCs of the service are served by QueueService (sidecar/queue/), registered beside.
        self.servicer = Servicer(config, self.delivery)  # type: ignore[abstract]
        self.queue = QueueService(config, self.delivery, lambda: self.servicer.observer)
        # The HTTP ingest for RudderStack/Segment SDKs (api/ingest/), into the same queue; off by default.
        self.ingest = HttpIngest(config, self.delivery, self.queue) if config.http_listen else None
        self.health = HealthServicer()
        self.status = Health(self.health, ("", SERVICE, *PROBES))  # what health answers, decided in one place
        self.readiness = Readiness(self.delivery, self.status)
        interceptors = (
            [AuthInterceptor(config.auth_token.reveal(), SERVICE, self.servicer.refused_call)]
            if config.auth_token
            else []
        )
        self.tracing = tracing.from_env()  # None unless OTEL_EXPORTER_OTLP_ENDPOINT is set
        if self.tracing:  # first, so that a call the auth refuses has its span too
            interceptors.insert(0, self.tracing.interceptor(SERVICE))
            self.client.span_hook = self.tracing.trengo_hook(config.base_url)
            self.tracing.install_log_filter(logging.getLogger())
            self.queue.tracing = self.tracing  # Enqueue stores the trace; the worker links its span to it
            if self.ingest is not None:
                self.ingest.tracing = self.tracing
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                # Past maxMessageBytes the handler refuses (logged, counted); past this, grpc's core does.
                ("grpc.max_receive_message_length", _transport_limit(config.max_message_bytes)),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        # Registered, as grpcio-tools' generated code does, so grpc matches the method in its core.
        handlers = {**self._handlers(), **self.queue.handlers()}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.server.add_registered_method_handlers(SERVICE, handlers)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable((SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), self.server)
        self.port = 0
        self.health_port = 0
        self.health_server = _health_server(self.health) if config.health_listen else None
        self.store_health = StoreHealth(self.state, self._store_changed)

    def not_serving_reasons(self) -> list[str]:
        """Why the service is NOT_SERVING now (for trengo_sidecar_not_serving{reason}); [] when it serves."""
        conditions = self.status.conditions
        named = {
            "starting": conditions.starting,
            "draining": conditions.draining,
            "trengo_misconfigured": conditions.trengo_misconfigured,
            "store_unavailable": conditions.store_unavailable,
            "channel_kind_mismatch": conditions.channel_mismatch,
        }
        return [reason for reason, holds in named.items() if holds]

    async def _store_changed(self) -> None:
        await self.status.update(store_unavailable=not self.store_health.up)

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The generated registration, with deserializers that turn a decode error into INVALID_ARGUMENT."""
        limits = (self.config.max_message_bytes, self.config.max_event_fields)
        unary = {
            "Identify": (self.servicer.Identify, pb.IdentifyRequest),
            "Track": (self.servicer.Track, pb.TrackRequest),
            "SendEvent": (self.servicer.SendEvent, pb.SendEventRequest),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                handler,
                request_deserializer=_tolerant(request_type, *limits),
                response_serializer=pb.DeliveryResult.SerializeToString,
            )
            for name, (handler, request_type) in unary.items()
        }
        handlers["Deliver"] = grpc.stream_stream_rpc_method_handler(
            self.servicer.Deliver,
            request_deserializer=_tolerant(pb.DeliverRequest, *limits),
            response_serializer=pb.DeliverResponse.SerializeToString,
        )
        return handlers

    async def start(self, check_trengo: bool = True) -> int:
        """Bind and start; returns the port bound (0 for a unix socket).

        ``check_trengo``: check the token and baseUrl first (health waits for it) and every few minutes.
        """
        self.port = self._bind(self.config.listen)
        if self.health_server is not None:
            try:
                self.health_port = self.health_server.add_insecure_port(self.config.health_listen)
            except RuntimeError as exc:  # grpc's "Failed to bind"
                where = self.config.health_listen
                raise OSError(f"healthListen {where}: cannot listen there: {exc}") from None
        await self.status.update()  # NOT_SERVING for both services until started (grpc's says SERVING)
        await self.store_health.start()  # a store that is down is retried in the background
        # The queue's tables in the same store (sidecar/queue/), opened once the store answers.
        await self.queue.start(self.state, lambda: self.store_health.started and self.store_health.up)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        if self.ingest is not None:
            try:
                await self.ingest.start()
            except OSError:
                await self.stop(grace=0)  # nothing left running on the loop the caller will close
                raise
        if check_trengo:
            await self.readiness.start()
        await self.status.update(starting=False)
        return self.port

    def _bind(self, address: str) -> int:
        c = self.config
        if not c.tls_cert_file:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, self._credentials())
        return 0 if address.startswith("unix:") else port  # grpc answers 1 for a socket file

    def _credentials(self) -> grpc.ServerCredentials:
        c = self.config
        ca = Path(c.tls_client_ca_file).read_bytes() if c.tls_client_ca_file else None
        return grpc.ssl_server_credentials(
            [(Path(c.tls_key_file).read_bytes(), Path(c.tls_cert_file).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING and new calls refused; calls in flight get the grace period; close Trengo."""
        grace = self.config.shutdown_grace_seconds if grace is None else grace
        ends = time.monotonic() + grace
        self.servicer.in_flight.closing = True
        await self.readiness.stop()
        await self.status.update(draining=True)
        await self.servicer.in_flight.wait_idle(grace)
        if self.ingest is not None:  # before the queue: a request in flight still commits and answers
            await self.ingest.stop()
        await self.queue.stop(max(0.0, ends - time.monotonic()))
        if self.servicer.in_flight.count:
            # The grace is over: calls still in flight are cut off, and each answers what it left
            # behind (nothing written, or an unknown outcome), instead of grpc's bare cancel.
            self.client.cut_off()
            self.servicer.in_flight.cut_off()
            await self.servicer.in_flight.wait_idle(CUT_OFF_SECONDS)
        self.health.close()  # open Watch streams end now, not cancelled by server.stop
        await self.server.stop(max(0.0, ends - time.monotonic()))
        if self.health_server is not None:
            await self.health_server.stop(0)
        await self.delivery.aclose()
        await self.store_health.aclose()
        await self.state.aclose()
        if self.tracing:
            await asyncio.to_thread(self.tracing.shutdown)  # flushes the last spans, off the event loop

    async def serve_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info(
            "signal received: draining calls in flight (grace %.0fs)", self.config.shutdown_grace_seconds
        )
        await self.stop()
        log.info("stopped")


def _health_server(health: HealthServicer) -> grpc.aio.Server:
    """``healthListen``: grpc.health.v1 and nothing else, in plaintext and without caller auth, as
    kubelet's gRPC probes dial the pod address with neither. The same servicer as on the API port,
    so both answer alike. Reflection is left out too: it would list the API's methods."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4096)])
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server

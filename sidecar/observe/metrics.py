"""Prometheus metrics for one Sidecar, on a registry of its own, served at ``/metrics``.

Counters and histograms are fed by the observer hooks of the servicer (one
call per RPC) and of the Trengo client (one call per HTTP attempt, one per
retry). Cache, rate-limiter and replay figures are read from the objects
that already count them, at scrape time, by a custom collector.

Labels are low-cardinality by construction: an RPC's method and status code
name, a Trengo endpoint *template* (ids replaced by ``{id}``; the query, and
so a search term, is never looked at), the HTTP method and status. Nothing
from config is exported, so the API token cannot show up in a scrape.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..plan.filters import RULES
from .http_metrics import IngestMetrics
from .metrics_server import MetricsHttp

if TYPE_CHECKING:
    from ..delivery.cache import TTLCache
    from ..delivery.delivery import Delivery
    from ..delivery.outcome import Outcome
    from ..errors import SidecarError
    from ..plan.transform import Call
    from ..state.health import StoreHealth
    from ..state.observed import ObservedState
    from ..trengo_api.client import TrengoClient

PREFIX = "trengo_sidecar"
# RPCs answer within their deadline (30 s by default); Trengo calls within requestTimeoutSeconds (10 s).
RPC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STORE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
TRENGO_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ENDPOINTS = frozenset({"/contacts", "/contacts/{id}", "/channels", "/channels/{id}/contacts", "/tickets"})
# the follow-ups' calls (sidecar/delivery/followups.py)
ENDPOINTS |= {"/labels", "/custom_fields", "/tickets/{id}/messages", "/tickets/{id}/labels",
              "/contacts/{id}/custom_fields"}
FOLLOWUP_KINDS = ("note", "label", "custom_field")
OTHER_ENDPOINT = "other"
_ID_SEGMENT = re.compile(r"(?<=/)[^/]*\d[^/]*(?=/|$)")


def endpoint(path: str) -> str:
    """The template of a Trengo path: ``/channels/405980/contacts`` -> ``/channels/{id}/contacts``.

    Only the path is looked at (never the query), any segment holding a digit
    counts as an id, and a path outside the known set is ``other``, so the
    label's values stay a small fixed set whatever a call carries.
    """
    template = _ID_SEGMENT.sub("{id}", path.split("?", 1)[0].rstrip("/") or "/")
    return template if template in ENDPOINTS else OTHER_ENDPOINT


class Sidecar(Protocol):
    """What the metrics read of the running sidecar (sidecar/api/app.py), which hands itself over at start.

    Named here, not imported, so that observe/ never reaches up into the api: the servicer takes the
    observer, ``queue`` gives its figures (``metrics()``), ``readiness`` its last check of Trengo and the
    names of every result (``results``).
    """

    servicer: Any
    client: TrengoClient
    state: ObservedState
    delivery: Delivery
    store_health: StoreHealth
    readiness: Any
    queue: Any
    ingest: Any  # the HTTP ingest (api/ingest/), or None when httpListen is off: it takes an observer

    def not_serving_reasons(self) -> list[str]: ...


class SidecarMetrics:
    """The metrics of one sidecar; also the observer its servicer and Trengo client call."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rpcs = Counter(
            f"{PREFIX}_rpcs", "gRPC calls handled, by method and status code.",
            ("method", "code"), registry=registry)
        self.rpc_duration = Histogram(
            f"{PREFIX}_rpc_duration_seconds", "Time to answer a gRPC call, by method.",
            ("method",), buckets=RPC_BUCKETS, registry=registry)
        self.trengo_requests = Counter(
            f"{PREFIX}_trengo_requests", "HTTP attempts sent to Trengo, by endpoint template, "
            "method and status (0: no answer).", ("endpoint", "method", "status"), registry=registry)
        self.trengo_duration = Histogram(
            f"{PREFIX}_trengo_request_duration_seconds", "Time of one HTTP attempt to Trengo.",
            ("endpoint", "method"), buckets=TRENGO_BUCKETS, registry=registry)
        self.store_duration = Histogram(
            f"{PREFIX}_store_duration_seconds", "Time of one state-store operation, by operation "
            "(flight_lock includes the wait for another holder).", ("operation",), buckets=STORE_BUCKETS,
            registry=registry)
        self.store_errors = Counter(
            f"{PREFIX}_store_errors", "State-store operations that failed (the store was unreachable "
            "or refused), by operation.", ("operation",), registry=registry)
        self.trengo_retries = Counter(
            f"{PREFIX}_trengo_retries", "Trengo calls tried again, by endpoint template and the "
            "reason of the failed attempt.", ("endpoint", "reason"), registry=registry)
        self.filtered_events = Counter(
            f"{PREFIX}_filtered", "Events not delivered, as RudderStack would not have delivered them, by "
            "rule (consent, integrations).", ("rule",), registry=registry)
        for rule in RULES:  # exported at 0 from the start, so a rate() over them has a baseline
            self.filtered_events.labels(rule)
        self.followup_failures = Counter(
            f"{PREFIX}_followup_failures", "Follow-up writes (a ticket's note or label, a contact's custom "
            "field) that did not land after their retries, by kind; the call still answered OK.",
            ("kind",), registry=registry)
        for kind in FOLLOWUP_KINDS:
            self.followup_failures.labels(kind)
        self.events = Counter(
            f"{PREFIX}_events", "Events handled by the RPCs (the queue's: trengo_sidecar_queue_attempts), "
            "by the action taken and how it ended (delivered, replayed, dry_run, filtered, failed).",
            ("action", "outcome"), registry=registry)
        self.errors = Counter(
            f"{PREFIX}_errors", "Calls and events answered with an error, by its ErrorInfo reason "
            "(TRENGO_UNAVAILABLE, STORE_UNAVAILABLE, INVALID_EVENT, ...).", ("reason",), registry=registry)

    # --- Servicer.observer ---------------------------------------------------------------

    def rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.labels(method, code).inc()
        self.rpc_duration.labels(method).observe(seconds)

    def event(self, outcome: Outcome | None, error: SidecarError | None) -> None:
        """One event's end: what it did, or the reason it failed."""
        if outcome is None:
            self.events.labels("none", "failed").inc()
            self.errors.labels(error.reason if error is not None else "INTERNAL").inc()
            return
        how = ("filtered" if outcome.action == "filtered" else "replayed" if outcome.replayed
               else "dry_run" if outcome.dry_run else "delivered")  # fmt: skip
        self.events.labels(outcome.action, how).inc()

    def refused(self, error: SidecarError) -> None:
        """A call refused before its event was read (auth, shutdown)."""
        self.errors.labels(error.reason).inc()

    def filtered(self, rule: str) -> None:
        self.filtered_events.labels(rule).inc()

    def followup_failed(self, kind: str) -> None:
        self.followup_failures.labels(kind).inc()

    # --- TrengoClient.observer -------------------------------------------------------------

    def observe(self, call: Call, status: int, seconds: float) -> None:
        where = endpoint(call.path)
        self.trengo_requests.labels(where, call.method, str(status)).inc()
        self.trengo_duration.labels(where, call.method).observe(seconds)

    def retried(self, call: Call, reason: str) -> None:
        self.trengo_retries.labels(endpoint(call.path), reason).inc()

    # --- ObservedState.observer ------------------------------------------------------------------

    def store(self, operation: str, seconds: float, ok: bool) -> None:
        self.store_duration.labels(operation).observe(seconds)
        if not ok:
            self.store_errors.labels(operation).inc()


class ReadCollector(Collector):
    """Figures the sidecar keeps itself, read when Prometheus scrapes.

    Plain int/float attributes written on the sidecar's event loop and read
    here from the HTTP server's thread: each read is atomic, which is all a
    scrape needs.
    """

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    def collect(self) -> Iterator[Metric]:
        delivery = self._sidecar.delivery
        caches: dict[str, TTLCache[Any, Any]] = {"contacts": delivery.contacts, "channels": delivery.channels}
        hits = CounterMetricFamily(f"{PREFIX}_cache_hits", "Cache look-ups that found a live entry.",
                                   labels=("cache",))
        misses = CounterMetricFamily(f"{PREFIX}_cache_misses", "Cache look-ups that found nothing live.",
                                     labels=("cache",))
        entries = GaugeMetricFamily(f"{PREFIX}_cache_entries", "Entries held (expired ones included "
                                    "until evicted or looked up).", labels=("cache",))
        for name, cache in caches.items():
            hits.add_metric((name,), cache.hits)
            misses.add_metric((name,), cache.misses)
            entries.add_metric((name,), len(cache))
        # Results live in the store (shared, maybe): their hits and misses, not an entry count.
        hits.add_metric(("idempotency",), delivery.idempotency.hits)
        misses.add_metric(("idempotency",), delivery.idempotency.misses)
        entries.add_metric(("idempotency",), delivery.idempotency.entries())
        yield from (hits, misses, entries)

        limiter = self._sidecar.client.limiter
        yield CounterMetricFamily(f"{PREFIX}_rate_limit_wait_seconds", "Time Trengo calls spent waiting "
                                  "for a client-side rate-limit slot.", value=limiter.waited_seconds)
        yield GaugeMetricFamily(f"{PREFIX}_rate_limit_queue_depth", "Trengo calls waiting for a "
                                "rate-limit slot now.", value=limiter.waiting)
        yield CounterMetricFamily(f"{PREFIX}_rate_limit_shared_waits", "Times the store's rate limit "
                                  "(the sliding log every sidecar on the token shares, or a 429's hold) "
                                  "made a Trengo call wait.", value=limiter.shared_waits)

        sidecar = self._sidecar
        yield GaugeMetricFamily(f"{PREFIX}_store_up", "1 while the state store answers, else 0.",
                                value=1 if sidecar.store_health.up else 0)
        why = GaugeMetricFamily(f"{PREFIX}_not_serving", "1 for each reason the service "
                                "trengo.sidecar.v1.TrengoSidecar reports NOT_SERVING now.",
                                labels=("reason",))
        failing = set(sidecar.not_serving_reasons())
        known = {"starting", "draining", "trengo_misconfigured", "store_unavailable", "channel_kind_mismatch"}
        for reason in sorted(known | failing):
            why.add_metric((reason,), 1 if reason in failing else 0)
        yield why

        yield CounterMetricFamily(
            f"{PREFIX}_idempotent_replays", "Results given back again for a repeated message_id "
            "(replayed=true), without calling Trengo.", value=delivery.replays)
        yield from self._sidecar.queue.metrics()
        yield from _trengo_check(self._sidecar)


def _trengo_check(sidecar: Sidecar) -> Iterator[Metric]:
    """The last readiness check of Trengo (sidecar/api/readiness.py): 1 for its result, 0 for the others."""
    last = sidecar.readiness.last
    if last is None:
        return
    result = GaugeMetricFamily(
        f"{PREFIX}_trengo_check", "The last check of the token and baseUrl against Trengo "
        "(GET /channels): 1 for its result.", labels=("result",))  # fmt: skip
    for name in sidecar.readiness.results:
        result.add_metric((name,), 1.0 if last.result == name else 0.0)
    yield result
    yield GaugeMetricFamily(
        f"{PREFIX}_trengo_check_timestamp_seconds", "When the last Trengo check ended (unix time).",
        value=last.at)  # fmt: skip


def install_metrics(sidecar: Sidecar, *, process: bool = True) -> CollectorRegistry:
    """A new registry holding this sidecar's metrics, its observers wired to them.

    ``process`` adds the standard process, platform and GC collectors (to this
    registry only, so several sidecars in one process never clash).
    """
    registry = CollectorRegistry(auto_describe=True)
    metrics = SidecarMetrics(registry)
    sidecar.servicer.observer = metrics
    sidecar.client.observer = metrics
    sidecar.state.observer = metrics
    if sidecar.ingest is not None:
        sidecar.ingest.observer = IngestMetrics(registry)
    registry.register(ReadCollector(sidecar))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


@dataclass
class MetricsServer:
    """The ``/metrics`` HTTP server of one sidecar (a daemon thread)."""

    registry: CollectorRegistry
    server: MetricsHttp
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.close()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6; ``:9464`` for every interface) -> (host, port)."""
    host, sep, port_text = listen.strip().rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise OSError(f"metrics listen address {listen!r} is not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"
    return host, int(port_text)


def start_metrics(listen: str, sidecar: Sidecar) -> MetricsServer:
    """Install the sidecar's metrics and serve them at ``http://HOST:PORT/metrics`` (port 0: any free one)."""
    host, port = parse_listen(listen)
    registry = install_metrics(sidecar)
    server = MetricsHttp(registry, host, port)  # one thread, capped and timed out (observe/metrics_server.py)
    return MetricsServer(registry, server, host, server.port)

"""The HTTP ingest's metrics (sidecar/api/ingest/): requests by route and status, their time and body
bytes, events by outcome.

Labels are fixed sets: the route (one of seven), the HTTP status, the outcome (four). Never a key.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram

PREFIX = "trengo_sidecar_http"
# What became of an event of a 200 (sidecar/api/ingest/accept.py decides): the outcome label's values.
OUTCOMES = ("accepted", "duplicate", "filtered", "rejected")
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BYTES = (256, 1024, 4096, 16384, 65536, 262144, 1048576, 4000 * 1024)  # up to the ingest's body limit


class IngestMetrics:
    """The observer HttpIngest calls once per request."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP ingest requests (RudderStack/Segment SDKs), by route and status.",
            ("route", "status"), registry=registry)  # fmt: skip
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds", "Time to answer an HTTP ingest request (its commit "
            "included), by route.", ("route",), buckets=SECONDS, registry=registry)  # fmt: skip
        self.body_bytes = Histogram(
            f"{PREFIX}_request_body_bytes", "Body bytes of HTTP ingest requests, after inflating "
            "gzip, by route.", ("route",), buckets=BYTES, registry=registry)  # fmt: skip
        self.events = Counter(
            f"{PREFIX}_events", "Events of HTTP ingest requests answered 200, by outcome: accepted "
            "(queued), duplicate (a messageId already accepted), filtered (page, screen, group, alias, "
            "consent, integrations), rejected (stored failed: INVALID_EVENT...).", ("outcome",),
            registry=registry)  # fmt: skip
        for outcome in OUTCOMES:  # exported at 0 from the start, so a rate() over them has a baseline
            self.events.labels(outcome)

    def request(self, route: str, status: int, seconds: float, size: int, counts: Mapping[str, int]) -> None:
        self.requests.labels(f"/v1/{route}", str(status)).inc()
        self.duration.labels(f"/v1/{route}").observe(seconds)
        self.body_bytes.labels(f"/v1/{route}").observe(size)
        for outcome, count in counts.items():
            self.events.labels(outcome).inc(count)

"""The queue's Prometheus figures, read at scrape time from what the worker already keeps.

Depth by state and the oldest event's age are the store's (every sidecar on it sees the same),
refreshed by the worker at each maintenance pass (about every second), so a scrape never waits
for the store. Attempts by outcome are this sidecar's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .store import FAILED, STATES

PREFIX = "trengo_sidecar_queue"
OUTCOMES = ("delivered", "retrying", "failed", "released")


def collect(queue: Any) -> Iterator[Metric]:
    """Metrics of a QueueService; nothing when it has no worker (memory store, queueConcurrency 0)."""
    worker = getattr(queue, "worker", None)
    if worker is None:
        return
    stats = worker.stats
    depth = GaugeMetricFamily(
        f"{PREFIX}_depth", "Accepted events by delivery state, in the whole store.", labels=("state",)
    )
    for state in STATES:
        depth.add_metric((state,), stats.depth.get(state, 0))
    yield depth
    oldest = 0.0 if stats.oldest_queued_at is None else max(0.0, time.time() - stats.oldest_queued_at)
    yield GaugeMetricFamily(
        f"{PREFIX}_oldest_age_seconds",
        "Age of the oldest event not yet delivered or failed (0 when there is none).",
        value=oldest,
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_failed", "Events failed for good, waiting for an operator's retry.",
        value=stats.depth.get(FAILED, 0),
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_held_bytes",
        "Stored bytes of the events held for delivery (not yet delivered; failed included), as "
        "queueMaxBytes counts them.",
        value=stats.held_bytes,
    )
    usage = GaugeMetricFamily(
        f"{PREFIX}_limit_usage_ratio",
        "How full the queue is against each of its limits (1: Enqueue answers QUEUE_FULL).",
        labels=("limit",),
    )
    config = queue.config
    usage.add_metric(("queueMaxDepth",), stats.held / config.queue_max_depth)
    usage.add_metric(("queueMaxBytes",), stats.held_bytes / config.queue_max_bytes)
    yield usage
    yield GaugeMetricFamily(
        f"{PREFIX}_watchers", "WatchDeliveries streams open on this sidecar (maxWatchers caps them).",
        value=getattr(queue, "watchers", 0),
    )
    attempts = CounterMetricFamily(
        f"{PREFIX}_attempts", "Delivery attempts by this sidecar, by how they ended.", labels=("outcome",)
    )
    for outcome in OUTCOMES:
        attempts.add_metric((outcome,), worker.attempts.get(outcome, 0))
    yield attempts

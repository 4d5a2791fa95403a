"""The queue's settings, read from the sidecar's Config: its retry policy, its worker, its bounds, and the
connections it adds to the store's pools. queue_service.py starts the queue with them; app.py sizes pools."""

from __future__ import annotations

from ..config.load import Config
from ..queue.policy import QueuePolicy
from ..queue.store import Limits
from ..queue.worker import WorkerSettings
from ..state.url import scheme_of


def queue_connections(config: Config) -> int:
    """The connections the queue adds to each of the store's pools (PostgreSQL): every delivery in
    flight may hold one of each (a message_id's lock, a person's lock, an operation), and the worker
    claims and renews leases beside them; without them, queued deliveries would take the connections
    synchronous calls need."""
    if scheme_of(config.store.reveal()) == "memory":
        return 0
    return config.queue_concurrency + 1


def policy_of(config: Config) -> QueuePolicy:
    return QueuePolicy(
        base_seconds=config.queue_retry_base_seconds,
        max_seconds=config.queue_retry_max_seconds,
        min_attempts=config.queue_give_up_attempts,
        give_up_seconds=config.queue_give_up_seconds,
        max_age_seconds=config.queue_max_age_seconds,
        contact_wait_seconds=config.queue_contact_wait_seconds,
    )


def settings_of(config: Config) -> WorkerSettings:
    return WorkerSettings(
        concurrency=config.queue_concurrency,
        lease_seconds=config.queue_lease_seconds,
        poll_seconds=config.queue_poll_seconds,
        attempt_seconds=config.queue_attempt_timeout_seconds,
        retention_seconds=config.queue_retention_seconds,
        failed_retention_seconds=config.queue_failed_retention_seconds,
    )


def limits_of(config: Config) -> Limits:
    return Limits(max_depth=config.queue_max_depth, max_bytes=config.queue_max_bytes)

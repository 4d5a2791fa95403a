"""The queue's retry schedule (RudderStack's): pure decisions, checked at their edges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import NotFound, Unavailable
from sidecar.queue.policy import (
    KEEP_RETRYING,
    OUTCOME_UNKNOWN,
    REJECTED,
    TRANSIENT,
    WAITING_FOR_CONTACT,
    QueuePolicy,
)
from sidecar.queue.worker import classify

HOUR = 3600.0
policy = QueuePolicy()


def test_delays_start_at_10s_and_double_up_to_300s() -> None:
    assert [policy.delay(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


def test_a_5xx_is_given_up_only_after_3_attempts_and_3_hours() -> None:
    assert policy.decide(TRANSIENT, 2, 4 * HOUR) == "retry"  # hours old, but only 2 attempts
    assert policy.decide(TRANSIENT, 50, 2.9 * HOUR) == "retry"  # many attempts, not yet 3 hours
    assert policy.decide(TRANSIENT, 3, 3 * HOUR) == "fail"


def test_429_and_408_keep_retrying_until_the_age_cap() -> None:
    assert policy.decide(KEEP_RETRYING, 500, 20 * HOUR) == "retry"
    assert policy.decide(KEEP_RETRYING, 500, 24 * HOUR - 301) == "retry"
    assert policy.decide(KEEP_RETRYING, 500, 24 * HOUR - 299) == "fail"  # the next try would be past 24 h


def test_other_4xx_and_unknown_outcomes_fail_at_once() -> None:
    assert policy.decide(REJECTED, 1, 0) == "fail"
    assert policy.decide(OUTCOME_UNKNOWN, 1, 0) == "fail"


def test_everything_is_configurable() -> None:
    quick = QueuePolicy(
        base_seconds=0.1, max_seconds=0.4, min_attempts=2, give_up_seconds=1, max_age_seconds=5
    )
    assert [quick.delay(n) for n in range(1, 5)] == pytest.approx([0.1, 0.2, 0.4, 0.4])
    assert quick.decide(TRANSIENT, 2, 1.0) == "fail"
    assert quick.decide(TRANSIENT, 1, 1.0) == "retry"


@given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0, max_value=1e7))
def test_no_transient_failure_fails_before_both_thresholds(attempts: int, age: float) -> None:
    verdict = policy.decide(TRANSIENT, attempts, age)
    if verdict == "fail":
        assert (attempts >= 3 and age >= 3 * HOUR) or age + policy.delay(attempts) > 24 * HOUR
    assert 0 < policy.delay(attempts) <= 300


def test_a_synchronous_call_takes_the_next_slot_before_a_queued_delivery() -> None:
    import asyncio

    from sidecar.deadline import Deadline
    from sidecar.trengo_api import ratelimit

    order: list[str] = []

    async def take(limiter: ratelimit.RateLimiter, who: str, background: bool) -> None:
        ratelimit.BACKGROUND.set(background)  # this task's own context
        await limiter.acquire(Deadline.after(5))
        order.append(who)

    async def main() -> None:
        limiter = ratelimit.RateLimiter(per_minute=1, max_waiting=10, window=0.3)
        await limiter.acquire(Deadline.after(1))  # the one slot is taken for the window
        queued = asyncio.create_task(take(limiter, "queued", True))
        await asyncio.sleep(0.05)  # the queued delivery asked first
        sync = asyncio.create_task(take(limiter, "sync", False))
        await asyncio.gather(queued, sync)

    asyncio.run(main())
    assert order == ["sync", "queued"]


def test_the_queue_config_keys_are_validated_naming_the_key() -> None:
    from sidecar.config.load import build_config
    from sidecar.errors import ConfigError

    base = {"apiToken": "t", "channelId": 1}
    config = build_config({**base, "queueRetryBaseSeconds": "0.5", "queueGiveUpAttempts": 2})
    assert (config.queue_retry_base_seconds, config.queue_give_up_attempts, config.queue_concurrency) == (
        0.5, 2, 4
    )
    for key, value in (("queueLeaseSeconds", 5), ("queuePollSeconds", 0), ("queueConcurrency", -1)):
        with pytest.raises(ConfigError) as caught:
            build_config({**base, key: value})  # a lease of 5 s is not longer than the 10 s request timeout
        assert caught.value.key == key


def test_a_track_waits_for_its_contact_on_the_schedule_for_up_to_600s() -> None:
    assert policy.contact_wait_seconds == 600
    assert policy.decide(WAITING_FOR_CONTACT, 1, 0) == "retry"
    assert policy.wait(WAITING_FOR_CONTACT, 1, 0) == 10  # the queue's own schedule
    assert policy.decide(WAITING_FOR_CONTACT, 6, 590) == "retry"
    assert policy.wait(WAITING_FOR_CONTACT, 6, 590) == 10  # one last try when the wait runs out, not past
    assert policy.decide(WAITING_FOR_CONTACT, 7, 600) == "fail"
    assert policy.decide(WAITING_FOR_CONTACT, 1, 0) != policy.decide(REJECTED, 1, 0)


def test_no_contact_wait_fails_at_once_and_the_wait_is_configurable() -> None:
    assert QueuePolicy(contact_wait_seconds=0).decide(WAITING_FOR_CONTACT, 1, 0) == "fail"
    short = QueuePolicy(base_seconds=0.1, max_seconds=0.4, contact_wait_seconds=1)
    assert short.wait(WAITING_FOR_CONTACT, 5, 0.9) == pytest.approx(0.1)
    assert short.decide(WAITING_FOR_CONTACT, 9, 1.0) == "fail"
    assert short.wait(TRANSIENT, 5, 0.9) == pytest.approx(0.4)  # other kinds: the schedule alone


def test_only_a_tracks_contact_not_found_waits() -> None:
    missing = NotFound("no Trengo contact has this email", reason="CONTACT_NOT_FOUND")
    assert classify(missing, 200, "track") == WAITING_FOR_CONTACT
    # An identify's CONTACT_NOT_FOUND is its trengoContactId answered 404: no wait will change that.
    assert classify(missing, 404, "identify") == REJECTED
    assert classify(Unavailable("503"), 503, "track") == TRANSIENT

"""When and how long to wait before sending a Trengo call again.

Only the decisions live here (which failures are worth another attempt, how
long to back off, how to read Trengo's 429 headers); the loop that sends is
in trengo.py.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A gateway's answer for Trengo's lost (502) or late (504) one: Trengo may have done the work, so these
# are retried only where a resend is safe. 408, 429 and 503 say the request was not processed; they
# and 500 (Trengo's own answer, not a gateway's) are retried for every call.
LOST_ANSWER_STATUS = frozenset({502, 504})
# The longest wait a 429 can impose. Trengo counts per minute, so its honest hints are at most 60 s
# (a proxy in front may ask for a few minutes; if it meant more, the next 429 says so again). Garbage
# such as "1e12" or "inf" would otherwise hold every call on the token, through RateLimiter.penalise,
# for as long as it says: until a restart.
MAX_RETRY_AFTER_SECONDS = 300.0
# Failures that happen before a byte of the request reaches Trengo: always safe to resend.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_seconds: float = 0.2
    max_seconds: float = 5.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter (AWS architecture blog): spreads retrying clients out."""
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1)))


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds Trengo asks us to wait (at most MAX_RETRY_AFTER_SECONDS), or None for no usable hint."""
    seconds = _hinted(headers, time.time() if now is None else now)
    if seconds is None or not math.isfinite(seconds):  # "nan" / "inf" are not hints
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


def _hinted(headers: Mapping[str, str], now: float) -> float | None:
    """Retry-After (seconds or HTTP date), else X-RateLimit-Reset."""
    value = headers.get("retry-after")
    if value:
        seconds = _seconds_or_date(value.strip(), now)
        if seconds is not None:
            return seconds
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            number = float(reset)
        except ValueError:
            return None
        # An epoch timestamp (Laravel's header) or, from some proxies, a delay in seconds.
        return max(0.0, number - now) if number > 1e9 else max(0.0, number)
    return None


def _seconds_or_date(value: str, now: float) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": an HTTP date is always GMT, never the local time
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None

"""When and how long to wait before sending a Trengo call again.

Only the decisions live here (which failures are worth another attempt, how
long to back off, how to read Trengo's 429 headers); the loop that sends is
in trengo.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
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
    """Seconds Trengo asks us to wait: Retry-After (seconds or HTTP date), else X-RateLimit-Reset."""
    now = time.time() if now is None else now
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
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None

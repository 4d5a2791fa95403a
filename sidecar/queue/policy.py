"""When a queued event is tried again, and when it is given up: RudderStack's schedule, configurable.

Pure decisions over plain values (an attempt's failure, the event's age, its
attempts so far); the worker applies them. The defaults are RudderStack's
server: delays from 10 s doubling to 300 s; a 5xx (or no answer at all) is
given up only after at least 3 attempts *and* 3 hours; 429 and 408 keep
retrying; any other 4xx is given up at once; and nothing is retried past a
hard cap on age. A write whose answer was lost (TRENGO_OUTCOME_UNKNOWN) is
never sent again blindly: it fails for an operator to look at. A Track whose
contact is not found yet (CONTACT_NOT_FOUND) waits for it, on the same
schedule, up to ``contact_wait_seconds``: Trengo's search may not see a new
contact at once, and the person's identify may still be on its way (the
store lets a person's queued identifies go before such a waiting track).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["retry", "fail"]

# Kinds of failed attempt, as the worker classifies them (see worker.classify).
KEEP_RETRYING = "keep_retrying"  # 429, 408, the sidecar's own rate-limit wait, a store hiccup
TRANSIENT = "transient"  # 5xx, no answer, an unreadable answer: given up after min attempts and time
REJECTED = "rejected"  # any other 4xx, or an event Trengo's data forbids: given up at once
OUTCOME_UNKNOWN = "outcome_unknown"  # a write may have happened: never resent blindly
WAITING_FOR_CONTACT = "waiting_for_contact"  # a Track's contact is not found (yet): retried up to a limit


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    base_seconds: float = 10.0
    max_seconds: float = 300.0
    min_attempts: int = 3
    give_up_seconds: float = 3 * 3600.0
    max_age_seconds: float = 24 * 3600.0
    contact_wait_seconds: float = 600.0

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt: base, doubling, capped at max.

        No jitter: events wait behind their person's head anyway, and the rate
        limit spreads the sends; a schedule the operator can predict is worth more.
        """
        exponent = min(max(attempts - 1, 0), 62)  # 2**62 s is past any cap: no overflow
        return float(min(self.max_seconds, self.base_seconds * 2**exponent))

    def wait(self, kind: str, attempts: int, age_seconds: float) -> float:
        """The wait before the next attempt: the schedule's delay; a Track waiting for its contact gets
        one last attempt when its wait runs out, not past it (a wait of 600 s means that, not 600 s and
        whatever the schedule's step was)."""
        delay = self.delay(attempts)
        if kind == WAITING_FOR_CONTACT:
            return max(0.0, min(delay, self.contact_wait_seconds - age_seconds))
        return delay

    def decide(self, kind: str, attempts: int, age_seconds: float) -> Verdict:
        """Retry or fail, after the ``attempts``-th attempt of an event accepted ``age_seconds`` ago."""
        if kind in (REJECTED, OUTCOME_UNKNOWN):
            return "fail"
        if kind == WAITING_FOR_CONTACT and age_seconds >= self.contact_wait_seconds:
            return "fail"
        if age_seconds + self.wait(kind, attempts, age_seconds) > self.max_age_seconds:
            return "fail"  # the next attempt would come past the hard cap
        if kind == TRANSIENT and attempts >= self.min_attempts and age_seconds >= self.give_up_seconds:
            return "fail"
        return "retry"

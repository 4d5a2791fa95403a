"""Reading Trengo's answers, and the errors that say what an answer (or its absence) meant.

What a call's answer holds (the records of a list, whether there is a next page, a created record's
id, a contact's name, Trengo's own words for a refusal) and the error types a failed call ends in
(TrengoError, OutcomeUnknown, CutOff). Kept apart from trengo.py, which sends and retries: nothing
here sends; it reads an answer already received, or names what became of a call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from ..errors import FailedPrecondition, Unavailable
from ..plan.transform import Call

if TYPE_CHECKING:
    from .records import CallRecord


BAD_RESPONSE_RETRY_SECONDS = 1.0  # RetryInfo for a read answered 200 with the wrong shape


class TrengoError(FailedPrecondition):
    """Trengo refused the request (4xx other than 429); carries what callers that recover look at.

    ``fields``: the keys of Trengo's ``errors`` object (a 422 names the fields it rejects), else empty.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        reason: str,
        record: CallRecord,
        fields: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.record = record
        self.fields = fields


class OutcomeUnknown(Unavailable):
    """A write reached Trengo but its answer was lost: it may or may not have happened."""

    reason = "TRENGO_OUTCOME_UNKNOWN"


class CutOff(OutcomeUnknown):
    """Shutdown's grace ran out while a write's answer was awaited: it may or may not have happened."""


def _json(response: httpx.Response) -> Any:
    """The parsed body, or None when it is not JSON (RecursionError: nested past Python's limit)."""
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None


def _describe(response: httpx.Response, data: Any, token: str) -> str:
    """Trengo's own words for a 4xx: its message and the fields it names.

    Never our token: a proxy or debug page that echoes the request's headers back must not hand it
    on to the caller and the logs (scrubbed before cutting, so no prefix of it survives either).
    """
    if data is None:
        text, limit = response.text or response.reason_phrase, 200
    elif not isinstance(data, dict):
        text, limit = str(data), 200
    else:
        parts = [str(data.get("message") or response.reason_phrase)]
        errors = data.get("errors")
        if isinstance(errors, dict):
            parts += [
                f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in errors.items()
            ]
        text, limit = "; ".join(parts), 500
    return (text.replace(token, "****") if token else text)[:limit]


def contact_list(call: Call, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``data`` list of a paginated answer; anything else is a failed look-up, not 'none'."""
    data = answer.get("data")
    if not isinstance(data, list) or not all(isinstance(c, dict) and _is_id(c.get("id")) for c in data):
        raise Unavailable(
            f"Trengo answered {call.method} {call.path} without a list of records (got keys: "
            f"{', '.join(sorted(map(str, answer))[:5]) or 'none'})",
            reason="TRENGO_BAD_RESPONSE",
            # Seen from Trengo's search as a passing failure ({"error": "Request failed"}): the
            # contract promises RetryInfo where the same call can succeed.
            retry_after=BAD_RESPONSE_RETRY_SECONDS,
        )
    return data


def has_next_page(answer: dict[str, Any]) -> bool:
    links = answer.get("links")
    if isinstance(links, dict) and links.get("next"):
        return True
    meta = answer.get("meta")
    if isinstance(meta, dict):
        current, last = meta.get("current_page"), meta.get("last_page")
        return isinstance(current, int) and isinstance(last, int) and current < last
    return False


def record_id(call: Call, answer: dict[str, Any]) -> int:
    """The ``id`` of a created or updated record."""
    value = answer.get("id")
    if not _is_id(value):
        data = answer.get("data")  # some Trengo answers wrap the record
        value = data.get("id") if isinstance(data, dict) else None
    if not _is_id(value):
        raise OutcomeUnknown(f"Trengo answered {call.method} {call.path} without an id")
    return int(value)  # type: ignore[arg-type]


def record_name(answer: dict[str, Any]) -> str | None:
    """The ``name`` of a contact in an answer (wrapped in ``data`` or not); None if it has none."""
    record = answer if _is_id(answer.get("id")) else answer.get("data")
    name = record.get("name") if isinstance(record, dict) else None
    return name if isinstance(name, str) else None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0

"""A request's body, parsed as strict JSON, its events taken out.

aiohttp inflates a gzip (or deflate, br, zstd) body as it reads it, in bounded chunks, and stops at
the size limit counted after inflating, so a small bomb cannot grow past it. Every refusal is a
BadBody with the HTTP status it gets (400 or 413) and a message naming what was wrong: nothing of a
malformed body is queued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# rudder-server's gateway refuses bodies over 4,000 KB (Gateway.maxReqSizeInKB), after decompression.
MAX_BODY_BYTES = 4000 * 1024
SINGLE_ROUTES = ("identify", "track", "page", "screen", "group", "alias")


class BadBody(Exception):
    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Body:
    events: list[Any]  # as sent: each is checked one by one (sidecar/ingest/accept.py)
    write_key: str | None  # the body's writeKey (Segment), if any


def too_large() -> BadBody:
    return BadBody(413, f"the body is over {MAX_BODY_BYTES // 1024} KB (after decompression)")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(data: bytes, route: str) -> Body:
    """The events of a /v1/batch body ({"batch": [...]}) or of a single-event route's body (one event)."""
    try:
        document = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        raise BadBody(400, f"the body is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(document, dict):
        raise BadBody(400, "the body must be a JSON object")
    key = document.get("writeKey")
    write_key = key if isinstance(key, str) else None
    if route != "batch":
        event = dict(document)
        event.pop("writeKey", None)
        event.pop("sentAt", None)
        if event.get("type") in (None, ""):
            event["type"] = route  # as rudder-server's gateway does for /v1/<type>
        return Body([event], write_key)
    if "batch" not in document:
        raise BadBody(400, "the body needs a batch: a list of events", field="batch")
    batch = document["batch"]
    if not isinstance(batch, list):
        raise BadBody(400, "batch must be a list of events", field="batch")
    return Body(batch, write_key)

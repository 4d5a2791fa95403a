"""Where the queue meets work landing in parallel: the event filters (consent, integrations).

Enqueue must not queue an event the filters drop; it answers with the reason instead. The filters
module comes with another change; until it is in, nothing is filtered.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..config import Config
from ..events import Event


def filtered_reason(event: Event, config: Config) -> str | None:
    """Why the filters drop this event (``"consent denied: C0004"``), or None to queue it."""
    try:
        filters: Any = importlib.import_module("sidecar.filters")
    except ModuleNotFoundError:
        return None
    reason: str | None = filters.filtered_reason(event, config)
    return reason

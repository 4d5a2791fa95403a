"""What one Trengo call did, as the result reports it: the client writes it, answers and traces read it.

Apart from client.py so that answers.py (which client.py imports) can name it without importing the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class CallRecord:
    """One Trengo call as the result reports it."""

    method: str
    url: str
    body_json: str = ""
    status_code: int = 0
    attempts: int = 0
    duration_ms: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    rate_limit_wait: float = 0.0  # seconds held by the rate limit (ours, and Trengo's 429s): for traces

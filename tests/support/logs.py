"""Capturing the sidecar's log lines: a handler, a fixture of JSON lines, the lines of handled calls."""

from __future__ import annotations

import json
import logging
import time

import pytest

from sidecar.observe.logs import JsonFormatter


class Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines():
    handler = Lines(JsonFormatter())
    logger = logging.getLogger("sidecar")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)


def handled(lines: list[str], count: int) -> list[dict[str, object]]:
    """The "handled" lines, once ``count`` are there: each is written just after its answer is sent."""
    deadline = time.monotonic() + 5
    while sum('"handled"' in line for line in lines) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    found = [json.loads(line) for line in lines if '"handled"' in line]
    assert len(found) == count, found
    return found

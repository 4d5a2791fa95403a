"""The simulator's small shared pieces: Laravel-style answers, id and page parsing, the paginator.

One module that app.py, control.py, extras.py and state.py all import, so that none of them has to
import another for these (they used to, in a cycle).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
PER_PAGE = 25
INVALID = "The given data was invalid."


def error(status: int, message: str, errors: Any = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if errors is not None:
        body["errors"] = errors
    return web.json_response(body, status=status)


def invalid(errors: dict[str, str]) -> web.Response:
    return error(422, INVALID, {field: [message] for field, message in errors.items()})


def int_or_none(value: Any) -> int | None:
    """Laravel accepts ids as JSON numbers or numeric strings; booleans are not ids."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def page_number(request: web.Request) -> int:
    page = int_or_none(request.query.get("page", "1"))
    return page if page is not None and page >= 1 else 1  # Laravel falls back to page 1


def bad_request(message: str) -> web.Response:
    return web.json_response({"message": message}, status=400)


def paginate(
    items: Sequence[T], page: int, url: str, render: Callable[[T], dict[str, Any]]
) -> dict[str, Any]:
    """Laravel's length-aware paginator answer, as Trengo sends it (25 per page).

    `render` runs on the page's items only, so a broad search does not serialise every match.
    """
    total = len(items)
    last_page = max(1, math.ceil(total / PER_PAGE))
    start = (page - 1) * PER_PAGE
    data = [render(item) for item in items[start : start + PER_PAGE]]

    def link(n: int) -> str:
        return f"{url}?page={n}"

    return {
        "data": data,
        "links": {
            "first": link(1),
            "last": link(last_page),
            "prev": link(page - 1) if page > 1 else None,
            "next": link(page + 1) if page < last_page else None,
        },
        "meta": {
            "current_page": page,
            "from": start + 1 if data else None,
            "path": url,
            "per_page": PER_PAGE,
            "to": start + len(data) if data else None,
            "last_page": last_page,
            "total": total,
        },
    }

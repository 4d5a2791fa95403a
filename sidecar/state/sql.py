"""Named SQL queries: blocks of a .sql file, each under a ``-- name: NAME`` line (as procrastinate does).

The SQL of a backend lives in one file beside it, read once; code asks for a query by name and never
builds SQL from strings.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)
HERE = Path(__file__).parent / "sql"


@cache
def load_queries(path: Path) -> dict[str, str]:
    """``{name: sql}`` for every ``-- name:`` block in ``path`` (other comment lines are kept)."""
    text = path.read_text(encoding="utf-8")
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def queries(backend: str) -> dict[str, str]:
    """The state's own queries for ``backend`` (sqlite, postgres)."""
    return load_queries(HERE / f"{backend}.sql")


def migrations(backend: str) -> list[str]:
    """The state's schema steps, in order: the ``migrate_N`` queries of the backend's file."""
    named = queries(backend)
    steps = sorted((int(name.removeprefix("migrate_")), sql) for name, sql in named.items()
                   if name.startswith("migrate_") and name[8:].isdigit())
    return [sql for _, sql in steps]

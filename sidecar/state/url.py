"""Store URLs: which backend a URL names, its checks, and its masked form for logs."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SCHEMES = ("memory", "sqlite", "postgresql", "postgres")
_QUERY_SECRETS = ("password", "sslpassword")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def mask_url(url: str) -> str:
    """The URL with its password (in the netloc or a query parameter) replaced by ****."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^@/]*@", "//****@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':****' if colon else ''}@{host}"
    query = parts.query
    if query:
        pairs = [(k, "****" if k.lower() in _QUERY_SECRETS else v) for k, v in parse_qsl(query, True)]
        query = urlencode(pairs, safe="*/")
    if (netloc, query) == (parts.netloc, parts.query):
        # Nothing to mask: the URL as given. urlunsplit would turn sqlite:////abs/path into sqlite://abs/path
        # (an empty netloc before a path that starts with //), which no longer names the file.
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def sqlite_path(url: str) -> str:
    """``sqlite:///abs/path/state.db`` -> ``/abs/path/state.db``."""
    parts = urlsplit(url)
    return parts.path


def check_url(url: str) -> str | None:
    """What is wrong with a store URL (never quoting its password), or None when it is usable."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        return (f"must be memory:, sqlite:///absolute/path.db or postgresql://user:password@host/db, "
                f"not {mask_url(url)!r}")
    if scheme == "memory":
        return None if url.lower() == "memory:" else "memory: takes nothing after the colon"
    if scheme == "sqlite":
        from pathlib import Path

        parts = urlsplit(url)
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            return f"a SQLite URL is sqlite:///absolute/path/state.db (three slashes), not {url!r}"
        if not Path(parts.path).parent.is_dir():
            return f"the directory of {parts.path} does not exist"
        return None
    import psycopg.conninfo  # imported only when a PostgreSQL URL is used

    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = reason[:200] if "://" not in reason and "password" not in reason else type(exc).__name__
        return f"is not a usable PostgreSQL URL ({mask_url(url)}): {reason}"
    # libpq checks option values only when it connects, which may be long after start-up.
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        modes = ", ".join(SSLMODES)
        return f"is not a usable PostgreSQL URL ({mask_url(url)}): sslmode must be one of {modes}"
    return None

"""Store URLs: which backend a URL names, its checks, and the only forms of it that are ever shown.

A PostgreSQL URL is read by libpq (``psycopg.conninfo.conninfo_to_dict``), never by ``urlsplit``:
libpq stops at no ``#`` or ``?`` inside a password, so a parser of its own would disagree with the
driver on where the password ends and could print part of it. What is shown is rebuilt from libpq's
own reading, with the secrets left out:

- ``mask_url``: the whole URL, password ``****`` (``--check-config``, the start-up log line);
- ``describe``: ``host:port/db`` only, for errors a caller receives ("the store (h:5432/db) is ...").

psycopg and psycopg_pool log on their own (``failed to resolve host ...``); ``RedactSecrets`` is a
logging filter that takes every known store secret out of any record, theirs and ours.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

SCHEMES = ("memory", "sqlite", "postgresql", "postgres")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
MASK = "****"
_SECRET_PARAMS = ("password", "sslpassword")
# Shown in neither mask_url's host part nor its query: the parts rebuilt separately, and secrets.
_NETLOC_PARAMS = ("user", "password", "host", "port", "dbname")
_UNPARSEABLE = (
    "libpq cannot parse it; percent-encode any of @ : / ? # % [ ] in the user name or password "
    "(@ is %40, / is %2F, # is %23, ? is %3F, % is %25). The URL is not shown, so as not to show its password"
)
_MISREAD = (
    "libpq reads part of it as a host, port or database name that cannot be one: a character in the user "
    "name or password must be percent-encoded (@ is %40, / is %2F). The URL is not shown, so as not to "
    "show its password"
)
PG_LOGGERS = ("psycopg", "psycopg.pool")


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def postgres_params(url: str) -> dict[str, Any] | None:
    """libpq's reading of a PostgreSQL URL or key=value conninfo, or None when it has none."""
    import psycopg.conninfo  # imported only when a PostgreSQL URL is used

    try:
        return psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return None


def _is_postgres(url: str) -> bool:
    return scheme_of(url) in ("postgresql", "postgres")


def mask_url(url: str) -> str:
    """The URL as libpq reads it, with no secret: ``postgresql://user:****@host:port/db?sslmode=...``."""
    if not _is_postgres(url):
        return url if scheme_of(url) in ("memory", "sqlite") else "(not a store URL; not shown)"
    params = postgres_params(url)
    if params is None or _misread(params):
        return f"{scheme_of(url)}://(unusable; not shown)"
    user = quote(str(params.get("user", "")), safe="")
    userinfo = user + (":" + MASK if "password" in params else "")
    netloc = (userinfo + "@" if userinfo else "") + _hosts(params)
    query = {k: MASK if k in _SECRET_PARAMS else str(v) for k, v in params.items() if k not in _NETLOC_PARAMS}
    if str(params.get("host", "")).startswith("/"):  # a socket directory goes in the query, as libpq reads it
        query = {"host": str(params["host"]), **query}
    dbname = quote(str(params.get("dbname", "")), safe="")
    return f"{scheme_of(url)}://{netloc}/{dbname}" + ("?" + urlencode(query, safe="*/") if query else "")


def describe(url: str) -> str:
    """What names the store in an error a caller receives: ``host:port/db``, a SQLite path, or memory."""
    scheme = scheme_of(url)
    if scheme == "sqlite":
        return urlsplit(url).path
    if not _is_postgres(url):
        return scheme or "memory"
    params = postgres_params(url)
    if params is None or _misread(params):
        return "unusable URL, not shown"
    return f"{_hosts(params) or 'localhost'}/{params.get('dbname', '')}"


def _hosts(params: dict[str, Any]) -> str:
    """``h1:5432,h2:5433`` from libpq's comma lists (a socket directory shows as nothing here)."""
    hosts = str(params.get("host", "")).split(",")
    ports = str(params.get("port", "")).split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    shown = []
    for host, port in zip(hosts, ports, strict=False):
        if host.startswith("/"):
            continue
        host = f"[{host}]" if ":" in host else host
        shown.append(host + (f":{port}" if port else ""))
    return ",".join(shown)


def secrets_of(url: str) -> list[str]:
    """Every text of ``url`` that must never be shown: the passwords, as libpq reads them and as
    written (percent-encoded, or misread because unencoded)."""
    if not _is_postgres(url) and "password" not in url:
        return []
    found: set[str] = set()
    params = postgres_params(url) or {}
    found.update(str(params[k]) for k in _SECRET_PARAMS if params.get(k))
    rest = url.split("://", 1)[-1]
    if "@" in rest:  # the widest reading of a userinfo: up to the last @
        userinfo = rest[: rest.rfind("@")]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    return sorted((s for s in found if s), key=len, reverse=True)


class RedactSecrets(logging.Filter):
    """Replaces every known store secret in a record's message, args and structured fields.

    One instance serves the process: each store URL adds its secrets (``remember``). It sits on the
    psycopg loggers (their records) and on the log handler (everything else)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def remember(self, url: str) -> None:
        merged = set(self.secrets) | set(secrets_of(url))
        self.secrets = sorted(merged, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = {k: self.redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        error = record.exc_info[1] if record.exc_info else None
        # A traceback's text is made later, from the exception: keep the record, drop its words.
        if error is not None and any(s in str(error) for s in self.secrets):
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg} (exception text withheld: it held a store secret)"
        return True


REDACT = RedactSecrets()


def guard_logs(url: str) -> None:
    """Redact ``url``'s secrets from psycopg's and psycopg_pool's records and from the sidecar's own."""
    REDACT.remember(url)
    for name in PG_LOGGERS:
        logger = logging.getLogger(name)
        if REDACT not in logger.filters:
            logger.addFilter(REDACT)
    for handler in logging.getLogger().handlers:
        if REDACT not in handler.filters:
            handler.addFilter(REDACT)


def sqlite_path(url: str) -> str:
    """``sqlite:///abs/path/state.db`` -> ``/abs/path/state.db``."""
    parts = urlsplit(url)
    return parts.path


def check_url(url: str) -> str | None:
    """What is wrong with a store URL (never quoting any of it), or None when it is usable."""
    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        return "must be memory:, sqlite:///absolute/path.db or postgresql://user:password@host/db (not shown)"
    if scheme == "memory":
        return None if url.lower() == "memory:" else "memory: takes nothing after the colon"
    if scheme == "sqlite":
        return _check_sqlite(url)
    params = postgres_params(url)
    if params is None:
        return f"is not a usable PostgreSQL URL: {_UNPARSEABLE}"
    if _misread(params):
        return f"is not a usable PostgreSQL URL: {_MISREAD}"
    # libpq checks option values only when it connects, which may be long after start-up.
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        modes = ", ".join(SSLMODES)
        return f"is not a usable PostgreSQL URL ({mask_url(url)}): sslmode must be one of {modes}"
    return None


def _check_sqlite(url: str) -> str | None:
    from pathlib import Path

    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
        return f"a SQLite URL is sqlite:///absolute/path/state.db (three slashes), not {url!r}"
    if not Path(parts.path).parent.is_dir():
        return f"the directory of {parts.path} does not exist"
    return None


def _misread(params: dict[str, Any]) -> bool:
    """libpq's reading cannot be what was meant: an unencoded @ or / in a password makes libpq take
    the rest for a host (``ssSECRET@127.0.0.1``), a port (``Pa``) or a database (``ss@host/db``),
    which it would then print in its own messages."""
    if any("@" in str(params.get(k, "")) for k in ("host", "port", "dbname", "user")):
        return True
    ports = str(params.get("port", "")).split(",")
    return not all(p.isdigit() or p == "" for p in ports)

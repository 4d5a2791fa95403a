"""What a valid config value is: the secret types, each value's parser and the checks across values.

config.py knows the keys, the sources and how they merge; this module knows only values, so the
rules for one (a token, a number, a template map, a store URL) and the checks on the assembled
Config read in one place, apart from where the values came from. Every problem is a ConfigError
naming the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..plan.templates import Template, TemplateError, compile_template
from . import exposure
from .sources import close_match, json_value
from .tls import tls_problems

# An eventTemplateMap entry's keys: anything else is a typo (add one here to allow it).
TEMPLATE_ENTRY_KEYS = ("from", "to", "note", "labels", "assignTo")  # all but from/to: config/followups.py
_TOKEN = re.compile(r"[\x21-\x7e]+")
MAX_RATE_LIMIT_PER_MINUTE = 100_000  # the limiter keeps one timestamp per allowed call


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('****')" if self._value else "Secret('')"

    __str__ = __repr__


class StoreUrl(Secret):
    """The ``store`` URL: shows itself with its password masked (logs, --check-config, errors)."""

    __slots__ = ()

    def masked(self) -> str:
        from ..state.url import mask_url

        return mask_url(self._value)

    def __repr__(self) -> str:
        return f"StoreUrl({self.masked()!r})"

    __str__ = __repr__


def _read_secret(key: str, path: Any) -> str:
    try:
        value = Path(str(path)).read_text(encoding="utf-8").strip()
    except OSError as exc:
        # The path, never the file's content: an operator must see which file the pod could not read.
        raise ConfigError(key, f"cannot read the secret file {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(key, "the secret file is empty")
    if "\n" in value:
        raise ConfigError(key, "the secret file holds more than one line; it must hold only the token")
    return _header_value(key, value)


def _read_secret_lines(key: str, path: Any) -> str:
    """A file of secrets, one a line (a Kubernetes Secret's key); blank lines and # comments skipped."""
    try:
        text = Path(str(path)).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, f"cannot read the secret file: {exc.strerror}") from None
    lines = [line.strip() for line in text.splitlines()]
    keys = ",".join(line for line in lines if line and not line.startswith("#"))
    if not keys:
        raise ConfigError(key, "the secret file is empty")
    return keys


def _write_keys(key: str, value: Any) -> tuple[Secret, ...]:
    """writeKeys: a list, or comma-separated text (env); each key a header-safe token, never echoed."""
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of write keys (or comma-separated text)")
    keys = []
    for i, entry in enumerate(value):
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{key}[{i}]", "must be a non-empty string")
        keys.append(Secret(_header_value(f"{key}[{i}]", entry.strip())))
    return tuple(keys)


def _header_value(key: str, token: str) -> str:
    """A token travels in an Authorization header: printable ASCII, no blanks (never quote it back)."""
    if token and not _TOKEN.fullmatch(token):
        raise ConfigError(key, "must be printable ASCII without spaces or control characters")
    return token


def _text(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(key, f"must be a string, not {type(value).__name__}")
    return str(value)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    """Flags, env and file accept the same spellings, in any case (``--log-level info``)."""
    for choice in choices:
        if choice.lower() == value.strip().lower():
            return choice
    raise ConfigError(key, f"must be one of {', '.join(choices)} (in any case)")


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(key, "must be true or false")


def _number(key: str, value: Any, kind: type[int] | type[float]) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(key, "must be a number, not a boolean")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"must be a {'whole ' if kind is int else ''}number") from None
    if not math.isfinite(number) or (kind is int and number != int(number)):
        raise ConfigError(key, f"must be a {'whole ' if kind is int else ''}number")
    return kind(number)


def _store(key: str, url: str) -> StoreUrl:
    from ..state.url import check_url

    problem = check_url(url)
    if problem:
        raise ConfigError(key, problem)
    return StoreUrl(url)


def _templates(key: str, value: Any) -> Mapping[str, Template]:
    """eventTemplateMap: RudderStack's [{"from": event, "to": template}], or a plain mapping."""
    if isinstance(value, str):
        value = json_value(key, value) if value.strip() else []
    if isinstance(value, dict):
        value = [{"from": k, "to": v} for k, v in value.items()]
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of {from, to} entries")
    templates: dict[str, Template] = {}
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, "must be a {from, to} entry")
        unknown = sorted(str(k) for k in entry if k not in TEMPLATE_ENTRY_KEYS)
        if unknown:
            hint = close_match(unknown[0], TEMPLATE_ENTRY_KEYS)
            allowed = ", ".join(TEMPLATE_ENTRY_KEYS)
            raise ConfigError(where, f"unknown key {unknown[0]!r}{hint}; an entry has only {allowed}")
        if not isinstance(entry.get("from"), str) or not entry["from"].strip():
            raise ConfigError(where, "needs a non-empty string 'from' (the event name)")
        source = entry.get("to") or ""
        if not isinstance(source, str):
            hint = "; in YAML, quote it: to: '{{ event }}'" if isinstance(source, dict) else ""
            raise ConfigError(f"{where}.to", f"must be a string (a Handlebars template){hint}")
        if entry["from"] in templates:
            raise ConfigError(where, f"event {entry['from']!r} is mapped twice")
        try:
            templates[entry["from"]] = compile_template(source.strip())
        except TemplateError as exc:
            raise ConfigError(f"{where}.to", f"bad template: {exc}") from None
    return MappingProxyType(templates)


def _check(c: Any) -> Iterator[ConfigError]:
    """The checks across the values of an assembled Config (load.py, which calls this). Typed loosely
    because naming Config here would import load.py back (a cycle); the config tests cover each check."""
    if c.channel_id == 0:
        yield ConfigError("channelId", "is required: the id of the Trengo channel (a positive integer)")
    elif c.channel_id < 0:
        yield ConfigError("channelId", "must be a positive integer (the id of the Trengo channel)")
    if not c.api_token:
        yield ConfigError("apiToken", "is required (or apiTokenFile / TRENGO_API_TOKEN_FILE)")
    if not c.base_url.startswith(("http://", "https://")):
        yield ConfigError("baseUrl", "must be an http:// or https:// URL")
    if c.rate_limit_per_minute > MAX_RATE_LIMIT_PER_MINUTE:
        yield ConfigError(
            "rateLimitPerMinute", f"must be at most {MAX_RATE_LIMIT_PER_MINUTE} (0 turns it off)"
        )
    positive = {
        "contactCacheSize": c.contact_cache_size,
        "contactCacheTtlSeconds": c.contact_cache_ttl_seconds,
        "channelCacheTtlSeconds": c.channel_cache_ttl_seconds,
        "maxAttempts": c.max_attempts,
        "requestTimeoutSeconds": c.request_timeout_seconds,
        "maxMessageBytes": c.max_message_bytes,
        "defaultDeadlineSeconds": c.default_deadline_seconds,
        "rateLimitQueueSize": c.rate_limit_queue_size,
        "idempotencyCacheSize": c.idempotency_cache_size,
        "queueRetryMaxSeconds": c.queue_retry_max_seconds,
        "queueMaxAgeSeconds": c.queue_max_age_seconds,
        "queueLeaseSeconds": c.queue_lease_seconds,
        "queuePollSeconds": c.queue_poll_seconds,
        "queueAttemptTimeoutSeconds": c.queue_attempt_timeout_seconds,
        "queueRetentionSeconds": c.queue_retention_seconds,
        "rateLimitWindowSeconds": c.rate_limit_window_seconds,
        "storePoolSize": c.store_pool_size,
        "maxEventFields": c.max_event_fields,
        "queueMaxDepth": c.queue_max_depth,
        "queueMaxBytes": c.queue_max_bytes,
        "queueFailedRetentionSeconds": c.queue_failed_retention_seconds,
        "maxWatchers": c.max_watchers,
    }
    for key, value in positive.items():
        if value <= 0:
            yield ConfigError(key, "must be greater than 0")
    non_negative = {
        "rateLimitPerMinute": c.rate_limit_per_minute,
        "idempotencyWindowSeconds": c.idempotency_window_seconds,
        "shutdownGraceSeconds": c.shutdown_grace_seconds,
        "backoffBaseSeconds": c.backoff_base_seconds,
        "backoffMaxSeconds": c.backoff_max_seconds,
        "queueConcurrency": c.queue_concurrency,
        "queueRetryBaseSeconds": c.queue_retry_base_seconds,
        "queueGiveUpAttempts": c.queue_give_up_attempts,
        "queueGiveUpSeconds": c.queue_give_up_seconds,
        "queueContactWaitSeconds": c.queue_contact_wait_seconds,
    }
    for key, value in non_negative.items():
        if value < 0:
            yield ConfigError(key, "must not be negative")
    if c.queue_lease_seconds <= c.request_timeout_seconds:
        # A dead sidecar's last write must land (or time out) before another takes the person's next event.
        yield ConfigError("queueLeaseSeconds", "must be greater than requestTimeoutSeconds")
    yield from _ingest_problems(c)
    if c.metrics_listen and not _is_host_port(c.metrics_listen):
        yield ConfigError("metricsListen", "must be HOST:PORT")
    if not (c.listen.startswith("unix:") or _is_host_port(c.listen)):
        yield ConfigError("listen", "must be HOST:PORT or unix:///path")
    if c.health_listen and not _is_host_port(c.health_listen):
        yield ConfigError("healthListen", "must be HOST:PORT")
    yield from exposure.problems(c)
    if bool(c.tls_cert_file) != bool(c.tls_key_file):
        yield ConfigError("tlsCertFile", "tlsCertFile and tlsKeyFile go together")
    if c.tls_client_ca_file and not c.tls_cert_file:
        yield ConfigError("tlsClientCaFile", "mTLS needs tlsCertFile and tlsKeyFile too")
    for key, path in (
        ("tlsCertFile", c.tls_cert_file),
        ("tlsKeyFile", c.tls_key_file),
        ("tlsClientCaFile", c.tls_client_ca_file),
    ):
        if path and not Path(path).is_file():
            yield ConfigError(key, f"no such file: {path}")
    tls = (c.tls_cert_file, c.tls_key_file, c.tls_client_ca_file)
    if all(not path or Path(path).is_file() for path in tls):
        yield from tls_problems(*tls)


def _ingest_problems(c: Any) -> Iterator[ConfigError]:
    if not c.http_listen:
        return
    if not _is_host_port(c.http_listen):
        yield ConfigError("httpListen", "must be HOST:PORT")
    if not c.write_keys:
        yield ConfigError("writeKeys", "is required with httpListen (or writeKeysFile)")
    from ..state.url import scheme_of

    if scheme_of(c.store.reveal()) == "memory":
        # The SDKs forget a batch once it is answered 200: it must survive a restart.
        yield ConfigError(
            "store", "httpListen needs a durable store (an acknowledged event must survive a restart): "
            "sqlite:///path/state.db or postgresql://..."
        )


def _is_host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and int(port) < 65536

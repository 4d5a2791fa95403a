"""Load, merge and validate the sidecar's configuration into one frozen object.

Sources, later ones winning: built-in defaults, a JSON or YAML file
(``--config``), environment variables, command-line flags. File keys are
RudderStack's own (``apiToken``, ``channelId``, ...), so a user can paste the
destination config they already have. Every problem is a ConfigError naming
the key, raised at start-up, never at the first event.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from . import filters
from .errors import ConfigError
from .followup_config import custom_field_map, ticket_extras
from .followup_plan import FieldMapping, TicketExtras
from .templates import Template, TemplateError, compile_template

DEFAULT_BASE_URL = "https://app.trengo.com/api/v2"
IDENTIFIER_KINDS = ("email", "phone", "auto")
LOG_FORMATS = ("text", "json")


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
        from .state.url import mask_url

        return mask_url(self._value)

    def __repr__(self) -> str:
        return f"StoreUrl({self.masked()!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class Config:
    api_token: Secret = field(default_factory=lambda: Secret(""))
    channel_id: int = 0
    channel_identifier: str = "auto"
    enable_dedup: bool = True
    # event name -> compiled subject template ("" source = no subject)
    event_templates: Mapping[str, Template] = field(default_factory=lambda: MappingProxyType({}))
    # event name -> the note and labels its tickets get (eventTemplateMap entries' note, labels)
    event_extras: Mapping[str, TicketExtras] = field(default_factory=lambda: MappingProxyType({}))
    custom_field_map: tuple[FieldMapping, ...] = ()
    base_url: str = DEFAULT_BASE_URL
    # consent rules (filters.py): provider -> entry, and the two legacy lists of consent ids
    consent_management: Mapping[str, filters.ConsentEntry] = field(
        default_factory=lambda: MappingProxyType({})
    )
    one_trust_cookie_categories: tuple[str, ...] = ()
    ketch_consent_purposes: tuple[str, ...] = ()
    listen: str = "127.0.0.1:50051"
    # caches
    contact_cache_size: int = 100_000
    contact_cache_ttl_seconds: float = 3600.0
    channel_cache_ttl_seconds: float = 300.0
    # delivery
    request_timeout_seconds: float = 10.0
    default_deadline_seconds: float = 30.0
    max_attempts: int = 5
    backoff_base_seconds: float = 0.2
    backoff_max_seconds: float = 5.0
    rate_limit_per_minute: int = 120
    rate_limit_queue_size: int = 1000
    rate_limit_window_seconds: float = 60.0  # Trengo's minute; tests shrink it
    # state (sidecar/state/): memory:, sqlite:///abs/path.db, postgresql://...
    store: StoreUrl = field(default_factory=lambda: StoreUrl("memory:"))
    store_pool_size: int = 4
    idempotency_window_seconds: float = 86_400.0
    idempotency_cache_size: int = 100_000
    # the delivery queue (Enqueue): RudderStack's retry schedule, and the worker
    queue_concurrency: int = 4
    queue_retry_base_seconds: float = 10.0
    queue_retry_max_seconds: float = 300.0
    queue_give_up_attempts: int = 3
    queue_give_up_seconds: float = 3 * 3600.0
    queue_max_age_seconds: float = 24 * 3600.0
    queue_lease_seconds: float = 60.0
    queue_poll_seconds: float = 1.0
    queue_attempt_timeout_seconds: float = 60.0
    queue_retention_seconds: float = 7 * 86400.0
    # server
    max_message_bytes: int = 4 * 1024 * 1024
    auth_token: Secret = field(default_factory=lambda: Secret(""))
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    shutdown_grace_seconds: float = 20.0
    metrics_listen: str = ""
    log_format: str = "text"
    log_level: str = "INFO"


# key in a config file -> (Config attribute, environment variable)
_KEYS: dict[str, tuple[str, str]] = {
    "apiToken": ("api_token", "TRENGO_API_TOKEN"),
    "apiTokenFile": ("api_token", "TRENGO_API_TOKEN_FILE"),
    "channelId": ("channel_id", "TRENGO_CHANNEL_ID"),
    "channelIdentifier": ("channel_identifier", "TRENGO_CHANNEL_IDENTIFIER"),
    "enableDedup": ("enable_dedup", "TRENGO_ENABLE_DEDUP"),
    "eventTemplateMap": ("event_templates", "TRENGO_EVENT_TEMPLATE_MAP"),
    "customFieldMap": ("custom_field_map", "TRENGO_CUSTOM_FIELD_MAP"),
    "baseUrl": ("base_url", "TRENGO_BASE_URL"),
    "consentManagement": ("consent_management", "TRENGO_CONSENT_MANAGEMENT"),
    "oneTrustCookieCategories": ("one_trust_cookie_categories", "TRENGO_ONE_TRUST_COOKIE_CATEGORIES"),
    "ketchConsentPurposes": ("ketch_consent_purposes", "TRENGO_KETCH_CONSENT_PURPOSES"),
    "listen": ("listen", "SIDECAR_LISTEN"),
    "contactCacheSize": ("contact_cache_size", "SIDECAR_CONTACT_CACHE_SIZE"),
    "contactCacheTtlSeconds": ("contact_cache_ttl_seconds", "SIDECAR_CONTACT_CACHE_TTL_SECONDS"),
    "channelCacheTtlSeconds": ("channel_cache_ttl_seconds", "SIDECAR_CHANNEL_CACHE_TTL_SECONDS"),
    "requestTimeoutSeconds": ("request_timeout_seconds", "SIDECAR_REQUEST_TIMEOUT_SECONDS"),
    "defaultDeadlineSeconds": ("default_deadline_seconds", "SIDECAR_DEFAULT_DEADLINE_SECONDS"),
    "maxAttempts": ("max_attempts", "SIDECAR_MAX_ATTEMPTS"),
    "backoffBaseSeconds": ("backoff_base_seconds", "SIDECAR_BACKOFF_BASE_SECONDS"),
    "backoffMaxSeconds": ("backoff_max_seconds", "SIDECAR_BACKOFF_MAX_SECONDS"),
    "rateLimitPerMinute": ("rate_limit_per_minute", "TRENGO_RATE_LIMIT_PER_MINUTE"),
    "rateLimitQueueSize": ("rate_limit_queue_size", "SIDECAR_RATE_LIMIT_QUEUE_SIZE"),
    "rateLimitWindowSeconds": ("rate_limit_window_seconds", "SIDECAR_RATE_LIMIT_WINDOW_SECONDS"),
    "store": ("store", "SIDECAR_STORE"),
    "storePoolSize": ("store_pool_size", "SIDECAR_STORE_POOL_SIZE"),
    "idempotencyWindowSeconds": ("idempotency_window_seconds", "SIDECAR_IDEMPOTENCY_WINDOW_SECONDS"),
    "idempotencyCacheSize": ("idempotency_cache_size", "SIDECAR_IDEMPOTENCY_CACHE_SIZE"),
    "queueConcurrency": ("queue_concurrency", "SIDECAR_QUEUE_CONCURRENCY"),
    "queueRetryBaseSeconds": ("queue_retry_base_seconds", "SIDECAR_QUEUE_RETRY_BASE_SECONDS"),
    "queueRetryMaxSeconds": ("queue_retry_max_seconds", "SIDECAR_QUEUE_RETRY_MAX_SECONDS"),
    "queueGiveUpAttempts": ("queue_give_up_attempts", "SIDECAR_QUEUE_GIVE_UP_ATTEMPTS"),
    "queueGiveUpSeconds": ("queue_give_up_seconds", "SIDECAR_QUEUE_GIVE_UP_SECONDS"),
    "queueMaxAgeSeconds": ("queue_max_age_seconds", "SIDECAR_QUEUE_MAX_AGE_SECONDS"),
    "queueLeaseSeconds": ("queue_lease_seconds", "SIDECAR_QUEUE_LEASE_SECONDS"),
    "queuePollSeconds": ("queue_poll_seconds", "SIDECAR_QUEUE_POLL_SECONDS"),
    "queueAttemptTimeoutSeconds": ("queue_attempt_timeout_seconds", "SIDECAR_QUEUE_ATTEMPT_TIMEOUT_SECONDS"),
    "queueRetentionSeconds": ("queue_retention_seconds", "SIDECAR_QUEUE_RETENTION_SECONDS"),
    "maxMessageBytes": ("max_message_bytes", "SIDECAR_MAX_MESSAGE_BYTES"),
    "authToken": ("auth_token", "SIDECAR_AUTH_TOKEN"),
    "authTokenFile": ("auth_token", "SIDECAR_AUTH_TOKEN_FILE"),
    "tlsCertFile": ("tls_cert_file", "SIDECAR_TLS_CERT_FILE"),
    "tlsKeyFile": ("tls_key_file", "SIDECAR_TLS_KEY_FILE"),
    "tlsClientCaFile": ("tls_client_ca_file", "SIDECAR_TLS_CLIENT_CA_FILE"),
    "shutdownGraceSeconds": ("shutdown_grace_seconds", "SIDECAR_SHUTDOWN_GRACE_SECONDS"),
    "metricsListen": ("metrics_listen", "SIDECAR_METRICS_LISTEN"),
    "logFormat": ("log_format", "SIDECAR_LOG_FORMAT"),
    "logLevel": ("log_level", "SIDECAR_LOG_LEVEL"),
}
_SECRET_FILE_KEYS = {"apiTokenFile": "apiToken", "authTokenFile": "authToken"}
_ALTERNATIVE = {**_SECRET_FILE_KEYS, **{v: k for k, v in _SECRET_FILE_KEYS.items()}}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_RATE_LIMIT_PER_MINUTE = 100_000  # the limiter keeps one timestamp per allowed call
ENV_VARS = {env: key for key, (_, env) in _KEYS.items()}
_TOKEN = re.compile(r"[\x21-\x7e]+")


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge file, environment and flag values (by file key) and validate them."""
    raw: dict[str, Any] = {}
    env = os.environ if env is None else env
    sources = (
        _read_file(Path(path)) if path else {},
        {key: env[var] for var, key in ENV_VARS.items() if env.get(var, "") != ""},
        {k: v for k, v in (overrides or {}).items() if v is not None},
    )
    for source in sources:
        _check_alternatives(source)
        for key in source:  # a token from a later source replaces a token file from an earlier one
            raw.pop(_ALTERNATIVE.get(key, ""), None)
        raw.update(source)
    return build_config(raw)


def _check_alternatives(source: Mapping[str, Any]) -> None:
    for file_key, key in _SECRET_FILE_KEYS.items():
        if key in source and file_key in source:
            raise ConfigError(key, f"give {key} or {file_key}, not both")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError("--config", f"{path} is not valid JSON/YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of keys, not {type(data).__name__}")
    # RudderStack exports wrap the settings in {"Config": {...}}; accept that as is.
    if isinstance(data.get("Config"), dict):
        data = data["Config"]
    return data


def build_config(raw: Mapping[str, Any]) -> Config:
    """Validate a mapping of file keys into a Config."""
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown key (known: {', '.join(sorted(_KEYS))})")
    _check_alternatives(raw)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECRET_FILE_KEYS:
            continue
        values[_KEYS[key][0]] = _parse(key, value)
    if "eventTemplateMap" in raw:  # its entries' note and labels (sidecar/followup_config.py)
        values["event_extras"] = ticket_extras("eventTemplateMap", raw["eventTemplateMap"])
    for file_key, key in _SECRET_FILE_KEYS.items():
        if raw.get(file_key):
            values[_KEYS[key][0]] = Secret(_read_secret(file_key, raw[file_key]))
    config = Config(**values)
    _check(config)
    return config


def _read_secret(key: str, path: Any) -> str:
    try:
        value = Path(str(path)).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read the secret file: {exc.strerror}") from None
    if not value:
        raise ConfigError(key, "the secret file is empty")
    if "\n" in value:
        raise ConfigError(key, "the secret file holds more than one line; it must hold only the token")
    return _header_value(key, value)


def _header_value(key: str, token: str) -> str:
    """A token travels in an Authorization header: printable ASCII, no blanks (never quote it back)."""
    if token and not _TOKEN.fullmatch(token):
        raise ConfigError(key, "must be printable ASCII without spaces or control characters")
    return token


_CONSENT_KEYS = {
    "consent_management": filters.parse_consent_management,
    "one_trust_cookie_categories": filters.parse_one_trust,
    "ketch_consent_purposes": filters.parse_ketch,
}
_INTS = {f.name for f in fields(Config) if f.type == "int"}
_FLOATS = {f.name for f in fields(Config) if f.type == "float"}


def _parse(key: str, value: Any) -> Any:
    attr = _KEYS[key][0]
    if attr in ("api_token", "auth_token"):
        return Secret(_header_value(key, _text(key, value).strip()))
    if attr == "event_templates":
        return _templates(key, value)
    if attr == "store":
        return _store(key, _text(key, value).strip())
    if attr in _CONSENT_KEYS:
        return _CONSENT_KEYS[attr](key, value)
    if attr == "custom_field_map":
        return custom_field_map(key, value)
    if attr == "enable_dedup":
        return _bool(key, value)
    if attr in _INTS:
        return _number(key, value, int)
    if attr in _FLOATS:
        return _number(key, value, float)
    return _text(key, value)


def _text(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(key, f"must be a string, not {type(value).__name__}")
    return str(value)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(key, f"must be true or false, not {value!r}")


def _number(key: str, value: Any, kind: type[int] | type[float]) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(key, "must be a number, not a boolean")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"must be a number, not {value!r}") from None
    if not math.isfinite(number) or (kind is int and number != int(number)):
        raise ConfigError(key, f"must be a {'whole ' if kind is int else ''}number, not {value!r}")
    return kind(number)


def _store(key: str, url: str) -> StoreUrl:
    from .state.url import check_url

    problem = check_url(url)
    if problem:
        raise ConfigError(key, problem)
    return StoreUrl(url)


def _templates(key: str, value: Any) -> Mapping[str, Template]:
    """eventTemplateMap: RudderStack's [{"from": event, "to": template}], or a plain mapping."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            raise ConfigError(key, f'must be JSON ([{{"from": ..., "to": ...}}]): {exc}') from None
    if isinstance(value, dict):
        value = [{"from": k, "to": v} for k, v in value.items()]
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of {from, to} entries")
    templates: dict[str, Template] = {}
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("from"), str) or not entry["from"]:
            raise ConfigError(where, "needs a non-empty string 'from' (the event name)")
        source = entry.get("to") or ""
        if not isinstance(source, str):
            raise ConfigError(f"{where}.to", "must be a string (a Handlebars template)")
        if entry["from"] in templates:
            raise ConfigError(where, f"event {entry['from']!r} is mapped twice")
        try:
            templates[entry["from"]] = compile_template(source.strip())
        except TemplateError as exc:
            raise ConfigError(f"{where}.to", f"bad template: {exc}") from None
    return MappingProxyType(templates)


def _check(c: Config) -> None:
    if c.channel_id <= 0:
        raise ConfigError("channelId", "is required: the id of the Trengo channel (a positive integer)")
    if c.channel_identifier not in IDENTIFIER_KINDS:
        raise ConfigError("channelIdentifier", f"must be one of {', '.join(IDENTIFIER_KINDS)}")
    if not c.api_token:
        raise ConfigError("apiToken", "is required (or apiTokenFile / TRENGO_API_TOKEN_FILE)")
    if not c.base_url.startswith(("http://", "https://")):
        raise ConfigError("baseUrl", "must be an http:// or https:// URL")
    if c.log_level.upper() not in LOG_LEVELS:
        raise ConfigError("logLevel", f"must be one of {', '.join(LOG_LEVELS)}")
    if c.rate_limit_per_minute > MAX_RATE_LIMIT_PER_MINUTE:
        raise ConfigError(
            "rateLimitPerMinute", f"must be at most {MAX_RATE_LIMIT_PER_MINUTE} (0 turns it off)"
        )
    if c.log_format not in LOG_FORMATS:
        raise ConfigError("logFormat", f"must be one of {', '.join(LOG_FORMATS)}")
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
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(key, "must be greater than 0")
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
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(key, "must not be negative")
    if c.queue_lease_seconds <= c.request_timeout_seconds:
        # A dead sidecar's last write must land (or time out) before another takes the person's next event.
        raise ConfigError("queueLeaseSeconds", "must be greater than requestTimeoutSeconds")
    if c.metrics_listen and not _is_host_port(c.metrics_listen):
        raise ConfigError("metricsListen", f"must be HOST:PORT, not {c.metrics_listen!r}")
    if not (c.listen.startswith("unix:") or _is_host_port(c.listen)):
        raise ConfigError("listen", f"must be HOST:PORT or unix:///path, not {c.listen!r}")
    if bool(c.tls_cert_file) != bool(c.tls_key_file):
        raise ConfigError("tlsCertFile", "tlsCertFile and tlsKeyFile go together")
    if c.tls_client_ca_file and not c.tls_cert_file:
        raise ConfigError("tlsClientCaFile", "mTLS needs tlsCertFile and tlsKeyFile too")
    for key, path in (
        ("tlsCertFile", c.tls_cert_file),
        ("tlsKeyFile", c.tls_key_file),
        ("tlsClientCaFile", c.tls_client_ca_file),
    ):
        if path and not Path(path).is_file():
            raise ConfigError(key, f"no such file: {path}")


def _is_host_port(value: str) -> bool:
    host, _, port = value.rpartition(":")
    return bool(host) and port.isdigit() and int(port) < 65536

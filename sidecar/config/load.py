"""Load, merge and validate the sidecar's configuration into one frozen object.

Sources, later ones winning: built-in defaults, a JSON or YAML file
(``--config``), environment variables, command-line flags. File keys are
RudderStack's own (``apiToken``, ``channelId``, ...), so a user can paste the
destination config they already have. Every problem is a ConfigError naming
the key, raised at start-up, never at the first event. What a valid value is
(the parsers, the checks across values, the Secret types) is config_values.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..plan import filters, phones
from ..plan.followup_plan import AssignTo, FieldMapping, TicketExtras
from ..plan.templates import Template
from . import consent, exposure
from .followups import assign_to, custom_field_map, ticket_extras
from .sources import close_match, env_values, read_file, unknown_env
from .values import (
    TEMPLATE_ENTRY_KEYS as TEMPLATE_ENTRY_KEYS,  # re-exported: the tests read it here
)
from .values import (
    Secret,
    StoreUrl,
    _bool,
    _check,
    _choice,
    _header_value,
    _number,
    _read_secret,
    _read_secret_lines,
    _store,
    _templates,
    _text,
    _write_keys,
)

DEFAULT_BASE_URL = "https://app.trengo.com/api/v2"
IDENTIFIER_KINDS = ("email", "phone", "auto")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Config:
    api_token: Secret = field(default_factory=lambda: Secret(""))
    channel_id: int = 0
    channel_identifier: str = "auto"
    enable_dedup: bool = True
    skip_unchanged_names: bool = True  # an identify with the name the sidecar knows sends nothing
    # ISO 3166 alpha-2 (NL): phones without a country are read there, and E.164 is the person
    # (sidecar/plan/phones.py); "" keeps the reference's behaviour
    default_phone_region: str = ""
    # event name -> compiled subject template ("" source = no subject)
    event_templates: Mapping[str, Template] = field(default_factory=lambda: MappingProxyType({}))
    # event name -> the note and labels its tickets get (eventTemplateMap entries' note, labels)
    event_extras: Mapping[str, TicketExtras] = field(default_factory=lambda: MappingProxyType({}))
    custom_field_map: tuple[FieldMapping, ...] = ()
    # the team or agent of every mapped event's ticket whose entry has no assignTo of its own
    default_assign_to: AssignTo | None = None
    base_url: str = DEFAULT_BASE_URL
    # consent rules (plan/filters.py; consent.py parses them): provider -> entry, two legacy id lists
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
    # the queue's bounds (issue 22): events and stored bytes held for delivery; failed ones kept this long
    queue_max_depth: int = 1_000_000
    queue_max_bytes: int = 1 << 30
    queue_failed_retention_seconds: float = 7 * 86400.0
    max_watchers: int = 64  # WatchDeliveries streams open at once on this sidecar
    # How long a queued Track whose contact is not found yet waits for it (an identify on its way).
    queue_contact_wait_seconds: float = 600.0
    # server
    max_message_bytes: int = 4 * 1024 * 1024
    auth_token: Secret = field(default_factory=lambda: Secret(""))
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    shutdown_grace_seconds: float = 20.0
    metrics_listen: str = ""
    health_listen: str = ""  # grpc.health.v1 alone, for kubelet probes on the pod address (exposure.py)
    allow_unauthenticated: bool = False  # the API off loopback with no caller auth, on purpose
    allow_insecure_trengo: bool = False  # an http:// baseUrl to a host other than loopback, on purpose
    max_event_fields: int = 10_000  # Struct nodes in one event (traits, properties, context together)
    # the HTTP ingest for RudderStack and Segment SDKs (sidecar/ingest/): off unless httpListen is set
    http_listen: str = ""
    write_keys: tuple[Secret, ...] = ()
    log_format: str = "text"
    log_level: str = "INFO"


# key in a config file -> (Config attribute, environment variable)
_KEYS: dict[str, tuple[str, str]] = {
    "apiToken": ("api_token", "TRENGO_API_TOKEN"),
    "apiTokenFile": ("api_token", "TRENGO_API_TOKEN_FILE"),
    "channelId": ("channel_id", "TRENGO_CHANNEL_ID"),
    "channelIdentifier": ("channel_identifier", "TRENGO_CHANNEL_IDENTIFIER"),
    "enableDedup": ("enable_dedup", "TRENGO_ENABLE_DEDUP"),
    "skipUnchangedNames": ("skip_unchanged_names", "SIDECAR_SKIP_UNCHANGED_NAMES"),
    "defaultPhoneRegion": ("default_phone_region", "TRENGO_DEFAULT_PHONE_REGION"),
    "eventTemplateMap": ("event_templates", "TRENGO_EVENT_TEMPLATE_MAP"),
    "customFieldMap": ("custom_field_map", "TRENGO_CUSTOM_FIELD_MAP"),
    "defaultAssignTo": ("default_assign_to", "TRENGO_DEFAULT_ASSIGN_TO"),
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
    "queueMaxDepth": ("queue_max_depth", "SIDECAR_QUEUE_MAX_DEPTH"),
    "queueMaxBytes": ("queue_max_bytes", "SIDECAR_QUEUE_MAX_BYTES"),
    "queueFailedRetentionSeconds": (
        "queue_failed_retention_seconds", "SIDECAR_QUEUE_FAILED_RETENTION_SECONDS"
    ),
    "maxWatchers": ("max_watchers", "SIDECAR_MAX_WATCHERS"),
    "queueContactWaitSeconds": ("queue_contact_wait_seconds", "SIDECAR_QUEUE_CONTACT_WAIT_SECONDS"),
    "maxMessageBytes": ("max_message_bytes", "SIDECAR_MAX_MESSAGE_BYTES"),
    "authToken": ("auth_token", "SIDECAR_AUTH_TOKEN"),
    "authTokenFile": ("auth_token", "SIDECAR_AUTH_TOKEN_FILE"),
    "tlsCertFile": ("tls_cert_file", "SIDECAR_TLS_CERT_FILE"),
    "tlsKeyFile": ("tls_key_file", "SIDECAR_TLS_KEY_FILE"),
    "tlsClientCaFile": ("tls_client_ca_file", "SIDECAR_TLS_CLIENT_CA_FILE"),
    "shutdownGraceSeconds": ("shutdown_grace_seconds", "SIDECAR_SHUTDOWN_GRACE_SECONDS"),
    "metricsListen": ("metrics_listen", "SIDECAR_METRICS_LISTEN"),
    "healthListen": ("health_listen", "SIDECAR_HEALTH_LISTEN"),
    "allowUnauthenticated": ("allow_unauthenticated", "SIDECAR_ALLOW_UNAUTHENTICATED"),
    "allowInsecureTrengo": ("allow_insecure_trengo", "SIDECAR_ALLOW_INSECURE_TRENGO"),
    "maxEventFields": ("max_event_fields", "SIDECAR_MAX_EVENT_FIELDS"),
    "httpListen": ("http_listen", "SIDECAR_HTTP_LISTEN"),
    "writeKeys": ("write_keys", "SIDECAR_WRITE_KEYS"),
    "writeKeysFile": ("write_keys", "SIDECAR_WRITE_KEYS_FILE"),
    "logFormat": ("log_format", "SIDECAR_LOG_FORMAT"),
    "logLevel": ("log_level", "SIDECAR_LOG_LEVEL"),
}
# Keys of RudderStack's Trengo destination config (rudder-integrations-config's db-config.json, and the
# live-events flags its control plane adds to every destination) that mean nothing to a sidecar: a
# pasted config keeps them, the sidecar ignores them and --check-config says so.
IGNORED_KEYS: dict[str, str] = {
    "connectionMode": "RudderStack's cloud/device mode per source; the sidecar is its own mode",
    "eventDelivery": "RudderStack's live-events switch",
    "eventDeliveryTS": "RudderStack's live-events switch",
}
# More names for a key's variable (alias -> key). The prefixes follow one rule, TRENGO_* for the
# destination's own keys and baseUrl, SIDECAR_* for the sidecar's settings; the one setting named
# against it keeps its name (the contract) and is also read under the rule's.
ENV_ALIASES: dict[str, str] = {"SIDECAR_RATE_LIMIT_PER_MINUTE": "rateLimitPerMinute"}
# TRENGO_*/SIDECAR_* variables of the project's other programs (simulator, clients, deploy manifests),
# known so that the start-up warning about unknown variables does not cry wolf in a shared shell.
OTHER_ENV = (
    *("TRENGO_SIM_TOKENS", "TRENGO_SIM_PORT"),  # trengo-sim, make run's demo
    *("TRENGO_SIDECAR_ADDR", "SIDECAR_ADDR", "SIDECAR_AUTH_ADDR"),  # apps, client tests: the sidecar
)
_SECRET_FILE_KEYS = {"apiTokenFile": "apiToken", "authTokenFile": "authToken", "writeKeysFile": "writeKeys"}
_ALTERNATIVE = {**_SECRET_FILE_KEYS, **{v: k for k, v in _SECRET_FILE_KEYS.items()}}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENV_VARS = {env: key for key, (_, env) in _KEYS.items()}
KNOWN_ENV = frozenset({*ENV_VARS, *ENV_ALIASES, *OTHER_ENV})
# values matched case-insensitively and kept in this spelling
_CHOICES = {"channel_identifier": IDENTIFIER_KINDS, "log_format": LOG_FORMATS, "log_level": LOG_LEVELS}
EMPTY_MAP_WARNING = "eventTemplateMap is empty: every Track will be refused (EVENT_NOT_MAPPED)"


@dataclass(frozen=True)
class Loaded:
    """A loaded config and what --check-config tells about it."""

    config: Config
    given: Mapping[str, Any]  # the merged file keys as given: holds secrets, never print it whole
    origins: Mapping[str, str]  # key -> "file PATH", "env NAME" or "flag --name" ("default" if absent)
    ignored: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge file, environment and flag values (by file key) and validate them."""
    return load(path, env, overrides).config


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    base_origin: str = "default",
) -> Loaded:
    """load_config, plus where each value came from, the keys ignored and the warnings for start-up.

    ``base``: file keys beneath all the sources (make run's demo config), their origin ``base_origin``.
    """
    env = os.environ if env is None else env
    raw, origins, problems = merge(path, env, overrides, base, base_origin)
    config = _build(raw, origins, problems)
    warnings = unknown_env(env, KNOWN_ENV) + ([] if config.event_templates else [EMPTY_MAP_WARNING])
    warnings += exposure.warnings(config)
    ignored = tuple(key for key in raw if key in IGNORED_KEYS)
    return Loaded(config, raw, origins, ignored, tuple(warnings))


def merge(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
    base_origin: str = "default",
) -> tuple[dict[str, Any], dict[str, str], list[ConfigError]]:
    """The file keys of every source merged (later ones win), where each came from, and the problems
    found merging them (a key and its file alternative in one source, a key set by two variables)."""
    raw: dict[str, Any] = {}
    origins: dict[str, str] = {}
    file = read_file(Path(path)) if path else {}
    from_env, env_origins, problems = env_values(env, {**ENV_VARS, **ENV_ALIASES})
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    sources = (
        (dict(base or {}), {key: base_origin for key in base or {}}),
        (file, {key: f"file {path}" for key in file}),
        (from_env, env_origins),
        (flags, {key: "flag --" + re.sub("([A-Z])", r"-\1", key).lower() for key in flags}),
    )
    for source, where in sources:
        problems += [_located(p, where) for p in _alternatives(source)]
        for key in source:  # a token from a later source replaces a token file from an earlier one
            raw.pop(_ALTERNATIVE.get(key, ""), None)
            origins.pop(_ALTERNATIVE.get(key, ""), None)
        raw.update(source)
        origins.update(where)
    return raw, origins, problems


def _alternatives(source: Mapping[str, Any]) -> list[ConfigError]:
    return [
        ConfigError(key, f"give {key} or {file_key}, not both")
        for file_key, key in _SECRET_FILE_KEYS.items()
        if key in source and file_key in source
    ]


def build_config(raw: Mapping[str, Any]) -> Config:
    """Validate a mapping of file keys into a Config."""
    return _build(raw, {}, _alternatives(raw))


def _build(raw: Mapping[str, Any], origins: Mapping[str, str], found: list[ConfigError]) -> Config:
    """Every problem at once (``found``: those of the sources): a ConfigError whose ``problems`` name
    each key and where its value came from."""
    values, problems = parse_values(raw, found)
    config = Config(**values)
    failed = {_attr(p.key) for p in problems}  # a bad value is reported once, not again as missing
    problems += [p for p in _problems(config) if _attr(p.key) not in failed]
    if problems:
        raise ConfigError.many([_located(p, origins) for p in problems])
    return config


def parse_values(
    raw: Mapping[str, Any], found: list[ConfigError]
) -> tuple[dict[str, Any], list[ConfigError]]:
    """Each key's value parsed (Config attribute -> value), and every problem (``found`` first)."""
    problems = list(found)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            if key in IGNORED_KEYS:
                continue
            if key not in _KEYS:
                hint = close_match(key, _KEYS) or " (trengo-sidecar --help lists the keys)"
                raise ConfigError(key, f"unknown key{hint}")
            if key == "writeKeysFile":
                values["write_keys"] = _write_keys(key, _read_secret_lines(key, value)) if value else ()
            elif key in _SECRET_FILE_KEYS:
                if value:
                    values[_KEYS[key][0]] = Secret(_read_secret(key, value))
            else:
                values[_KEYS[key][0]] = _parse(key, value)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if "eventTemplateMap" in raw and not any(p.key.startswith("eventTemplateMap") for p in problems):
        try:  # its entries' note and labels (sidecar/config/followups.py)
            values["event_extras"] = ticket_extras("eventTemplateMap", raw["eventTemplateMap"])
        except ConfigError as exc:
            problems.extend(exc.problems)
    return values, problems


def _key_of(where: str) -> str:
    """The key an error is about: ``eventTemplateMap`` for ``eventTemplateMap[0].to``."""
    return re.split(r"[\[.]", where, maxsplit=1)[0]


def _attr(key: str) -> str:
    """The Config attribute an error's key is about."""
    return _KEYS.get(_key_of(key), (key, ""))[0]


def _located(problem: ConfigError, origins: Mapping[str, str]) -> ConfigError:
    """The problem, saying which env variable or flag the value came from."""
    origin = origins.get(_key_of(problem.key), "")
    if problem.origin or not origin.startswith(("env ", "flag ")):
        return problem
    return ConfigError(problem.key, problem.problem, origin)


def _problems(config: Config) -> Iterator[ConfigError]:
    try:
        yield from _check(config)
    except ConfigError as exc:  # a check that raises rather than yields still gets reported
        yield exc


_CONSENT_KEYS = {
    "consent_management": consent.parse_consent_management,
    "one_trust_cookie_categories": consent.parse_one_trust,
    "ketch_consent_purposes": consent.parse_ketch,
}
_INTS = {f.name for f in fields(Config) if f.type == "int"}
_FLOATS = {f.name for f in fields(Config) if f.type == "float"}


def _region(key: str, value: Any) -> str:
    try:
        return phones.region(_text(key, value)) or ""
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _parse(key: str, value: Any) -> Any:
    attr = _KEYS[key][0]
    if attr in ("api_token", "auth_token"):
        token = _text(key, value).strip()
        if attr == "auth_token" and not token:
            # Blank would turn caller auth off without a word: leave the key out for that.
            raise ConfigError(key, "is blank; give a token, or leave the key out to run without caller auth")
        return Secret(_header_value(key, token))
    if attr == "event_templates":
        return _templates(key, value)
    if attr == "write_keys":
        return _write_keys(key, value)
    if attr == "store":
        return _store(key, _text(key, value).strip())
    if attr in _CONSENT_KEYS:
        return _CONSENT_KEYS[attr](key, value)
    if attr == "custom_field_map":
        return custom_field_map(key, value)
    if attr == "default_phone_region":
        return _region(key, value)
    if attr == "default_assign_to":
        return assign_to(key, value)
    if attr in ("enable_dedup", "skip_unchanged_names", "allow_unauthenticated", "allow_insecure_trengo"):
        return _bool(key, value)
    if attr in _CHOICES:
        return _choice(key, _text(key, value), _CHOICES[attr])
    if attr in _INTS:
        return _number(key, value, int)
    if attr in _FLOATS:
        return _number(key, value, float)
    return _text(key, value)

"""What the sidecar's configuration is: the Config object, and every key with its attribute and variable.

How the keys are read, merged and parsed into a Config is load.py; what a valid value is, values.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..plan import filters
from ..plan.followup_plan import AssignTo, FieldMapping, TicketExtras
from ..plan.templates import Template
from .values import Secret, StoreUrl

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

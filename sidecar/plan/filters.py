"""What RudderStack would not deliver, the sidecar does not deliver: consent and integrations.

RudderStack's server drops some events before its Trengo destination ever sees
them (rudder-server's ``processor/consent.go`` and
``processor/integrations/integrations.go``). Users who migrate send those
events unchanged, so the same rules run here, as one pure step on the
validated Event, before any planning or Trengo call:

- ``integrations`` (SendEvent events only): ``{"All": false}`` or
  ``{"Trengo": false}`` keeps the event from Trengo;
- consent: ``context.consentManagement.deniedConsentIds`` against the
  configured ``consentManagement``, ``oneTrustCookieCategories`` and
  ``ketchConsentPurposes``.

A filtered event is not an error: it is answered OK with ACTION_FILTERED and
the reason. Entry points: ``check(event, config)`` (rule and reason) and
``filtered_reason(event, config)`` (the reason alone).

The event's values are read tolerantly, as RudderStack reads them (a wrong type
means "no denied consents" or "drop", by the rules below); the config's are
parsed once at start-up by the ``parse_*`` functions of sidecar/config/consent.py, and arrive here
as values (``ConsentRules``: the Config has them), so this module never imports the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .events import Event

CONSENT = "consent"  # the rule names: a metric label, so a fixed set
INTEGRATIONS = "integrations"
RULES = (CONSENT, INTEGRATIONS)
DESTINATION = "Trengo"  # the key of this destination in an event's integrations (exact case)
CUSTOM = "custom"  # the provider whose resolution strategy comes from the config, not the event
ONE_TRUST = "oneTrust"
KETCH = "ketch"


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    """One provider's entry of the configured consentManagement."""

    resolution_strategy: str
    consents: tuple[str, ...]


class ConsentRules(Protocol):
    """The consent rules, parsed (sidecar/config/consent.py): what ``check`` reads of the Config."""

    @property
    def consent_management(self) -> Mapping[str, ConsentEntry]: ...
    @property
    def one_trust_cookie_categories(self) -> tuple[str, ...]: ...
    @property
    def ketch_consent_purposes(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Filtered:
    """Why an event is not delivered: the rule (``consent`` or ``integrations``) and a readable reason."""

    rule: str
    reason: str


def check(event: Event, config: ConsentRules) -> Filtered | None:
    """The rule that drops this event, or None to deliver it. Pure: reads only its arguments."""
    # RudderStack picks the destinations an event's integrations allow first, then filters them by consent.
    reason = _integrations(event.integrations)
    if reason is not None:
        return Filtered(INTEGRATIONS, reason)
    reason = _consent(event.consent, config)
    if reason is not None:
        return Filtered(CONSENT, reason)
    return None


def filtered_reason(event: Event, config: ConsentRules) -> str | None:
    """Why this event must not be delivered (``"consent denied: C0004"``), or None to deliver it."""
    filtered = check(event, config)
    return filtered.reason if filtered else None


# --- integrations ---------------------------------------------------------------------


def _integrations(value: Any) -> str | None:
    """``integrations``: absent is ``{}`` (the event's parser gives that), All defaults to true."""
    if not isinstance(value, dict):
        return "integrations is not an object" if value is not None else "integrations is null"
    everything = value.get("All", True)
    if not isinstance(everything, bool):
        return "integrations.All is not a boolean"
    own = value.get(DESTINATION)
    if isinstance(own, bool):
        return None if own else f"integrations.{DESTINATION} is false"
    if isinstance(own, dict):
        return None  # {"Trengo": {...}}: destination options, which mean "deliver"
    return None if everything else "integrations.All is false"


# --- consent -----------------------------------------------------------------------------


def _consent(value: Any, config: ConsentRules) -> str | None:
    provider, strategy, denied = _event_consent(value)
    if not denied:
        return None  # nothing denied: deliver (allowedConsentIds is never looked at)
    entry = config.consent_management.get(provider)
    if entry is not None:  # a generic entry for the event's provider wins over the legacy keys
        if provider == CUSTOM:
            strategy = entry.resolution_strategy
        return _resolve(entry.consents, denied, every=strategy == "or")
    if provider in ("", ONE_TRUST) and config.one_trust_cookie_categories:
        return _resolve(config.one_trust_cookie_categories, denied, every=False)
    if provider in ("", KETCH) and config.ketch_consent_purposes:
        return _resolve(config.ketch_consent_purposes, denied, every=True)
    return None  # custom, iubenda or a provider in another case never fall back to the legacy keys


def _event_consent(value: Any) -> tuple[str, str, frozenset[str]]:
    """context.consentManagement as (provider, resolutionStrategy, denied ids); wrong types read as empty."""
    if not isinstance(value, dict):
        return "", "", frozenset()
    denied = value.get("deniedConsentIds")
    if not isinstance(denied, list) or not all(isinstance(d, str) for d in denied):
        denied = []
    return _text(value.get("provider")), _text(value.get("resolutionStrategy")), frozenset(denied) - {""}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _resolve(configured: tuple[str, ...], denied: frozenset[str], *, every: bool) -> str | None:
    """Drop when every configured consent is denied (``every``), else when any one is."""
    hit = [c for c in configured if c in denied]
    if not hit or (every and len(hit) < len(configured)):
        return None
    return "consent denied: " + ", ".join(hit)

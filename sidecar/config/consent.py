"""The consent keys of the config (consentManagement, oneTrustCookieCategories, ketchConsentPurposes),
parsed once at start-up into the values sidecar/plan/filters.py checks events against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..plan.filters import ConsentEntry

# --- the config keys (parsed once, at start-up) ------------------------------------------
#
# Values a RudderStack destination config can hold are read as RudderStack reads them: empty
# strings and incomplete entries are dropped, a consentManagement that is not a list is ignored.
# A value of a wrong type inside a list is a ConfigError naming it, where RudderStack would
# silently drop the whole setting: a consent rule that quietly does nothing is a privacy failure.


def parse_consent_management(key: str, value: Any) -> Mapping[str, ConsentEntry]:
    """consentManagement: ``[{provider, resolutionStrategy, consents: [{consent}]}]`` -> provider -> entry."""
    value = _json(key, value)
    if not isinstance(value, list):
        return MappingProxyType({})  # as RudderStack: not an array, not used
    entries: dict[str, ConsentEntry] = {}
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        item = _entry(where, item)
        provider = _config_text(f"{where}.provider", item.get("provider"))
        strategy = _config_text(f"{where}.resolutionStrategy", item.get("resolutionStrategy"))
        consents = _ids(f"{where}.consents", item.get("consents"), "consent")
        if provider and consents:  # entries without either do not count; a later one replaces an earlier
            entries[provider] = ConsentEntry(strategy, consents)
    return MappingProxyType(entries)


def parse_one_trust(key: str, value: Any) -> tuple[str, ...]:
    """oneTrustCookieCategories: ``[{oneTrustCookieCategory}]``."""
    return _ids(key, _json(key, value), "oneTrustCookieCategory")


def parse_ketch(key: str, value: Any) -> tuple[str, ...]:
    """ketchConsentPurposes: ``[{purpose}]``."""
    return _ids(key, _json(key, value), "purpose")


def _json(key: str, value: Any) -> Any:
    """From the environment the value is JSON text; from a file, already a list (or JSON text too)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.strip() else []
    except ValueError as exc:
        raise ConfigError(key, f"must be JSON (a list of objects): {exc}") from None


def _ids(where: str, value: Any, name: str) -> tuple[str, ...]:
    """A list of ``{name: id}`` objects -> the non-empty ids, in order. Null or absent: none."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(where, f"must be a list of {{{name}}} objects, not {type(value).__name__}")
    ids = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        text = _config_text(f"{at}.{name}", _entry(at, item).get(name))
        if text and text not in ids:
            ids.append(text)
    return tuple(ids)


def _entry(where: str, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ConfigError(where, f"must be an object, not {type(item).__name__}")
    return item


def _config_text(where: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(where, f"must be a string, not {type(value).__name__}")
    return value

"""Load, merge and validate the sidecar's configuration into one frozen object.

Sources, later ones winning: built-in defaults, a JSON or YAML file
(``--config``), environment variables, command-line flags. File keys are
RudderStack's own (``apiToken``, ``channelId``, ...), so a user can paste the
destination config they already have. Every problem is a ConfigError naming
the key, raised at start-up, never at the first event. What a valid value is
(the parsers, the checks across values, the Secret types) is values.py; what the keys
are (Config, each key's attribute and variable) is schema.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..plan import phones
from . import consent, exposure
from .followups import assign_to, custom_field_map, ticket_extras
from .schema import (  # what the keys are; re-exported: callers and tests import them from here
    _ALTERNATIVE,
    _KEYS,
    _SECRET_FILE_KEYS,
    DEFAULT_BASE_URL,
    ENV_ALIASES,
    ENV_VARS,
    IDENTIFIER_KINDS,
    IGNORED_KEYS,
    KNOWN_ENV,
    LOG_FORMATS,
    LOG_LEVELS,
    OTHER_ENV,
    Config,
)
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


__all__ = [
    "DEFAULT_BASE_URL", "EMPTY_MAP_WARNING", "ENV_ALIASES", "ENV_VARS", "IDENTIFIER_KINDS", "IGNORED_KEYS",
    "KNOWN_ENV", "LOG_FORMATS", "LOG_LEVELS", "OTHER_ENV", "TEMPLATE_ENTRY_KEYS", "Config", "Loaded",
    "Secret", "StoreUrl", "build_config", "load", "load_config", "merge", "parse_values",
]

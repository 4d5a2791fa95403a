"""What the CLI tells about the config: ``--check-config`` and the environment list in ``--help``.

Both are made from the key table in sidecar.config, so a key added there shows up here with no
change. ``--check-config`` prints YAML a config file could hold: its keys, secrets masked, the
templates as written, and a comment on each line saying where the value came from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import fields
from importlib import metadata
from typing import Any

import yaml

from ..plan.templates import Template
from . import load as cfg

MASK = "****"
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")  # a password in a URL (a store DSN, a proxy)


def version() -> str:
    try:
        return metadata.version("trengo-sidecar")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def check_config(loaded: cfg.Loaded) -> str:
    """The effective config as YAML, each key with its origin; ignored keys and warnings as comments."""
    lines = [
        f"# trengo-sidecar {version()}: the effective config, secrets masked.",
        "# Each line says where its value came from: file, env, flag or default.",
    ]
    for key, value, origin in _entries(loaded):
        if value is _UNSET:
            # Not a line a file could hold: a blank token is refused (it would turn caller auth off).
            lines.append(f"# {key}: not set  # {origin}")
            continue
        text = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True, width=10_000)
        first, *rest = text.rstrip("\n").split("\n")
        lines.append(f"{first}  # {origin}")
        lines.extend(rest)
    for key in loaded.ignored:
        lines.append(f"# ignored: {key} ({cfg.IGNORED_KEYS[key]}; {loaded.origins.get(key, 'file')})")
    lines.extend(f"# warning: {warning}" for warning in loaded.warnings)
    return "\n".join(lines)


def _entries(loaded: cfg.Loaded) -> list[tuple[str, Any, str]]:
    """(key, value as a file holds it, origin) for every key; a secret's file key only when it was used."""
    attrs = {f.name for f in fields(cfg.Config)}
    entries = []
    for key, (attr, _env) in cfg._KEYS.items():
        file_key = f"{key}File"
        if key in cfg._SECRET_FILE_KEYS.values() and file_key in loaded.given:
            continue  # the token was read from the file named by its *File key, printed instead
        if key in cfg._SECRET_FILE_KEYS:
            if key not in loaded.given:
                continue
            value: Any = file_value(loaded.given[key])
        elif attr == "event_templates" and key in loaded.given:
            # As given, entries whole (note, labels and any key added later), so the output round-trips.
            value = file_value(_decoded(loaded.given[key]))
        elif attr == "event_templates":
            value = [_template_entry(loaded.config, name) for name in loaded.config.event_templates]
        elif attr not in attrs:
            continue
        elif attr == "write_keys":
            value = file_value(loaded.config.write_keys)  # masked, one **** a key: never as given
        elif key in loaded.given and not isinstance(getattr(loaded.config, attr), _PLAIN):
            value = file_value(_decoded(loaded.given[key]))  # a structure: as given, not as parsed
        elif isinstance(getattr(loaded.config, attr), cfg.Secret) and not getattr(loaded.config, attr):
            value = _UNSET
        else:
            value = file_value(getattr(loaded.config, attr))
        entries.append((key, value, loaded.origins.get(key, "default")))
    return entries


_UNSET = object()  # a secret nobody gave: printed as a comment, so the output loads again


def _template_entry(config: cfg.Config, name: str) -> dict[str, Any]:
    """One eventTemplateMap entry as a file holds it, with its note, labels and assignTo if any."""
    entry: dict[str, Any] = {"from": name, "to": config.event_templates[name].source}
    extras = config.event_extras.get(name)
    if extras is not None and extras.note is not None:
        entry["note"] = extras.note.source
    if extras is not None and extras.labels:
        entry["labels"] = list(extras.labels)
    if extras is not None and extras.assign_to is not None:
        entry["assignTo"] = {extras.assign_to.kind: extras.assign_to.target}
    return entry


# Values printed as parsed (canonical: 405980 for "405980", INFO for info). A structured value (the
# consent keys) is printed as given instead, since its parsed form is not the file's.
_PLAIN = (cfg.Secret, str, int, float, bool)


def _decoded(value: Any) -> Any:
    """A structured value as a file holds it: JSON text (from env) decoded."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def file_value(value: Any) -> Any:
    """A Config value as a config file writes it: secrets masked, templates as their source."""
    if isinstance(value, cfg.StoreUrl):
        return value.masked()  # the URL shown, its password masked
    if isinstance(value, cfg.Secret):
        return MASK if value else ""
    if isinstance(value, Template):
        return value.source
    if isinstance(value, Mapping):
        return {str(k): file_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | frozenset | set):
        return [file_value(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\1{MASK}@", value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)  # a type the table learned after this was written: its str, never its repr


def env_help() -> str:
    """The environment variables, for ``--help``: each with the config key it sets."""
    names = {**cfg.ENV_VARS, **cfg.ENV_ALIASES}
    width = max(map(len, names)) + 2
    lines = ["environment variables (each sets the config key beside it; flags win over env, env over file):"]
    for var, key in names.items():
        alias = f" (alias of {cfg._KEYS[key][1]})" if var in cfg.ENV_ALIASES else ""
        lines.append(f"  {var.ljust(width)}{key}{alias}")
    lines.append("Unknown TRENGO_*/SIDECAR_* variables are warned about at start.")
    return "\n".join(lines)

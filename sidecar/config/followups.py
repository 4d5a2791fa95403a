"""Config for the follow-up writes: ``note`` and ``labels`` in eventTemplateMap entries, customFieldMap.

Kept apart from config.py's own keys; config.py calls these two functions. Every problem is a
ConfigError naming the key (``eventTemplateMap[2].labels[0]``), raised at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..plan.followup_plan import AssignTo, FieldMapping, Target, TicketExtras
from ..plan.templates import TemplateError, compile_template

FIELD_MAP_KEYS = ("from", "to")


def ticket_extras(key: str, value: Any) -> Mapping[str, TicketExtras]:
    """The ``note`` and ``labels`` of each eventTemplateMap entry that has them, by event name.

    ``from`` and ``to`` are checked by config.py's own parser, which runs first.
    """
    entries = _entries(key, value)
    if isinstance(entries, dict):  # the {event: template} shorthand has no room for extras
        return MappingProxyType({})
    extras: dict[str, TicketExtras] = {}
    problems: list[ConfigError] = []  # every bad note and label of every entry, reported at once
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict) or not {"note", "labels", "assignTo"} & set(entry):
            continue
        parsed: dict[str, Any] = {}
        for name, parse in (("note", _note), ("labels", _labels), ("assignTo", assign_to)):
            try:
                parsed[name] = parse(f"{where}.{name}", entry.get(name))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if len(parsed) < 3:
            continue
        note, labels, assign = parsed["note"], parsed["labels"], parsed["assignTo"]
        if note is not None or labels or assign is not None:
            extras[entry["from"]] = TicketExtras(note, labels, assign)
    if problems:
        raise ConfigError.many(problems)
    return MappingProxyType(extras)


def assign_to(where: str, value: Any) -> AssignTo | None:
    """``assignTo`` / ``defaultAssignTo``: ``{team: "<team name>"}`` or ``{user: "<agent e-mail>"}``
    (an id instead of the name is taken as it is); null or absent for none."""
    if isinstance(value, str):  # from an environment variable: JSON
        try:
            value = json.loads(value) if value.strip() else None
        except ValueError as exc:
            raise ConfigError(where, f"must be JSON such as {{\"team\": \"Support\"}}: {exc}") from None
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("team", "user"):
        raise ConfigError(where, 'must be {team: "<team name>"} or {user: "<agent e-mail>"}')
    kind, target = next(iter(value.items()))
    what = "team" if kind == "team" else "agent e-mail"
    parsed = _target(f"{where}.{kind}", target, what)
    if kind == "user" and isinstance(parsed, str) and "@" not in parsed:
        raise ConfigError(f"{where}.user", f"must be the agent's e-mail address, not {parsed[:40]!r}")
    return AssignTo(kind, parsed)


def custom_field_map(key: str, value: Any) -> tuple[FieldMapping, ...]:
    """customFieldMap: ``[{"from": trait path, "to": custom field id or name}]``, or a plain mapping."""
    entries = _entries(key, value)
    if isinstance(entries, dict):
        entries = [{"from": k, "to": v} for k, v in entries.items()]
    mappings: list[FieldMapping] = []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, "must be an object {from: trait path, to: custom field}")
        unknown = sorted(set(map(str, entry)) - set(FIELD_MAP_KEYS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "unknown key (known: from, to)")
        trait = entry.get("from")
        if not isinstance(trait, str) or not trait.strip() or trait.strip(".") != trait.strip():
            raise ConfigError(f"{where}.from", "needs a trait path such as 'plan' or 'address.city'")
        target = _target(f"{where}.to", entry.get("to"), "custom field")
        if any(m.field == target for m in mappings):
            raise ConfigError(f"{where}.to", f"custom field {target!r} is filled twice")
        mappings.append(FieldMapping(trait.strip(), target))
    return tuple(mappings)


def _entries(key: str, value: Any) -> list[Any] | dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            raise ConfigError(key, f"must be JSON: {exc}") from None
    if not isinstance(value, list | dict):
        raise ConfigError(key, "must be a list of {from, to} entries")
    return value


def _note(where: str, source: Any) -> Any:
    if source is None or source == "":
        return None
    if not isinstance(source, str):
        hint = "; in YAML, quote it: note: '{{ order_id }}'" if isinstance(source, dict) else ""
        raise ConfigError(where, f"must be a string (a Handlebars template){hint}")
    try:
        return compile_template(source.strip())
    except TemplateError as exc:
        raise ConfigError(where, f"bad template: {exc}") from None


def _labels(where: str, value: Any) -> tuple[Target, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(where, "must be a list of Trengo label names or ids")
    targets, problems = [], []
    for i, item in enumerate(value):
        try:
            targets.append(_target(f"{where}[{i}]", item, "label"))
        except ConfigError as exc:
            problems.append(exc)
    if problems:
        raise ConfigError.many(problems)
    return tuple(targets)


def _target(where: str, value: Any, what: str) -> Target:
    """An id (a positive whole number) or a name (a non-empty string)."""
    if isinstance(value, bool):
        raise ConfigError(where, f"must be a {what} name or id, not a boolean")
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(where, f"a {what} id must be a positive integer")
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError(where, f"must be a {what} name (a non-empty string) or id (a positive integer)")

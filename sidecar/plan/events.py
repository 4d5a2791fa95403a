"""Turn any request (typed Identify/Track, or a RudderStack JSON event) into one Event.

All validation of caller input lives here: a request that gets past
``from_*`` is well-formed, so nothing downstream has to second-guess it.
Struct values are converted once (structs.py), with limits on depth and size and
with NaN/Infinity refused, so hostile input fails here as INVALID_ARGUMENT naming
the field instead of deep inside the delivery.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ..errors import InvalidArgument
from .structs import MAX_DEPTH as MAX_DEPTH  # re-exported, with the converters (the ingest, the tests)
from .structs import plain_json as plain_json
from .structs import struct_to_dict
from .structs import too_many_fields as too_many_fields

MAX_IDENTIFIER = 254  # the longest valid e-mail address
MAX_NAME = 255
MAX_EVENT_NAME = 255
MAX_ID = 256

CHANNEL_ID_TYPE = "trengoChannelId"
CONTACT_ID_TYPE = "trengoContactId"

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
_PHONE = re.compile(r"[+(]{0,2}[0-9][0-9 ().\-]{4,30}")  # "(06) 1234-5678" and "(+31) 6 ..." too
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 controls
# Unicode format characters (category Cf): invisible, yet they change what a reader sees. U+202E
# (right-to-left override) turns "Ann\u202eTXT.exe" into "Annexe.TXT" in an agent's inbox; zero-width
# spaces make two identical-looking e-mails or names different contacts. Refused in names and ids.


EventKind = Literal["identify", "track"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event, whatever the request shape it came in."""

    kind: EventKind
    email: str | None = None
    phone: str | None = None
    phone_field: str = ""  # where the phone came from (traits.phone, ...), for an error that names it
    name: str | None = None
    event_name: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    channel_id: int | None = None  # from a trengoChannelId external id
    contact_id: int | None = None  # from a trengoContactId external id
    user_id: str = ""
    anonymous_id: str = ""
    message_id: str = ""
    dry_run: bool = False
    # Kept as given, for filters.py, which reads them tolerantly as RudderStack does:
    consent: Any = None  # context.consentManagement
    integrations: Any = field(default_factory=dict)  # a SendEvent event's integrations; absent = {}
    # (values, where) for traits then context.traits, "where" as the request named them: customFieldMap
    # reads these
    trait_sources: tuple[tuple[dict[str, Any], str], ...] = ()


# --- typed requests ---------------------------------------------------------


def from_identify(request: Any) -> Event:
    traits = struct_to_dict(request.traits, "traits")
    context = struct_to_dict(request.context, "context")
    ids = [(x.type, x.id, f"external_ids[{i}]") for i, x in enumerate(request.external_ids)]
    return _build("identify", traits, context, {}, ids, "", _typed_meta(request), prefix="")


def from_track(request: Any) -> Event:
    properties = struct_to_dict(request.properties, "properties")
    context = struct_to_dict(request.context, "context")
    ids = [(x.type, x.id, f"external_ids[{i}]") for i, x in enumerate(request.external_ids)]
    return _build("track", {}, context, properties, ids, request.event, _typed_meta(request), prefix="")


def _typed_meta(request: Any) -> dict[str, Any]:
    return {
        "user_id": _short_text(request.user_id, "user_id"),
        "anonymous_id": _short_text(request.anonymous_id, "anonymous_id"),
        "message_id": _short_text(request.message_id, "message_id"),
        "dry_run": request.dry_run,
    }


def _build(
    kind: EventKind,
    traits: dict[str, Any],
    context: dict[str, Any],
    properties: dict[str, Any],
    external_ids: list[tuple[Any, Any, str]],
    event_name: Any,
    meta: dict[str, Any],
    prefix: str,
) -> Event:
    context_traits = _object(context.get("traits"), f"{prefix}context.traits")
    external_ids = external_ids + _context_external_ids(
        context.get("externalId"), f"{prefix}context.externalId"
    )
    sources = (
        (traits, f"{prefix}traits"),
        (context_traits, f"{prefix}context.traits"),
        (properties, f"{prefix}properties"),
    )
    channel_id, contact_id = _external_ids(external_ids)
    phone_field = _first(sources, ("phone",))[1]
    if kind == "track":
        event_name = _event_name(event_name, f"{prefix}event")
    return Event(
        kind=kind,
        email=_identifier(sources, "email", _EMAIL, "an e-mail address") or _external_email(external_ids),
        phone=_identifier(sources, "phone", _PHONE, "a phone number"),
        phone_field=phone_field,
        name=_name(sources),
        event_name=event_name if kind == "track" else "",
        properties=properties,
        channel_id=channel_id,
        contact_id=contact_id,
        consent=context.get("consentManagement"),
        trait_sources=sources[:2],
        **meta,
    )


# --- the RudderStack JSON shape -------------------------------------------------


def from_send_event(request: Any) -> Event:
    if not request.HasField("event"):
        raise InvalidArgument("event is required: a RudderStack event as JSON", field="event")
    return from_rudder_json(struct_to_dict(request.event, "event"), request.dry_run)


def from_rudder_json(data: dict[str, Any], dry_run: bool = False) -> Event:
    """A RudderStack event as plain JSON values (struct_to_dict's or plain_json's)."""
    kind = data.get("type")
    if kind is None or kind == "":
        raise InvalidArgument("event.type is required (identify or track)", field="event.type")
    if not isinstance(kind, str):
        raise InvalidArgument("event.type must be a string (identify or track)", field="event.type")
    kind = kind.strip().lower()
    if kind not in ("identify", "track"):
        raise InvalidArgument(
            f"event.type {kind[:40]!r} is not supported: use identify or track", field="event.type"
        )
    meta = {
        "user_id": _id_text(data.get("userId"), "event.userId"),
        "anonymous_id": _id_text(data.get("anonymousId"), "event.anonymousId"),
        "message_id": _id_text(data.get("messageId"), "event.messageId"),
        "dry_run": dry_run,
        "integrations": data.get("integrations", {}),  # null stays None: filtered, as RudderStack does
    }
    traits = _object(data.get("traits"), "event.traits")
    context = _object(data.get("context"), "event.context")
    properties = _object(data.get("properties"), "event.properties") if kind == "track" else {}
    return _build(cast(EventKind, kind), traits, context, properties, [], data.get("event"), meta, "event.")


# --- field rules ------------------------------------------------------------------


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object, not {_js_type(value)}", field=where)
    return value


def _js_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _first(sources: tuple[tuple[dict[str, Any], str], ...], keys: tuple[str, ...]) -> tuple[Any, str]:
    """The first present, non-empty value of any key, searching the sources in order."""
    for values, where in sources:
        for key in keys:
            value = values.get(key)
            if value is not None and value != "":
                return value, f"{where}.{key}"
    return None, ""


def _identifier(sources: Any, key: str, pattern: re.Pattern[str], what: str) -> str | None:
    value, where = _first(sources, (key,))
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string, not {_js_type(value)}", field=where)
    value = value.strip()
    if not value:
        return None
    if len(value) <= MAX_IDENTIFIER:
        _no_format_characters(value, where)
    if len(value) > MAX_IDENTIFIER or _CONTROL.search(value) or not pattern.fullmatch(value):
        raise InvalidArgument(f"{where} is not {what}: {value[:64]!r}", field=where)
    return value


def _format_character(value: str) -> str | None:
    """The first format character of ``value`` (checked values are short: a name, an id).

    ASCII holds no format character, and most values are ASCII: checked in one C call, not a
    category look-up a character (a third of an HTTP ingest event's checks)."""
    if value.isascii():
        return None
    return next((ch for ch in value if unicodedata.category(ch) == "Cf"), None)


def _no_format_characters(value: str, where: str) -> None:
    found = _format_character(value)
    if found:
        code = f"U+{ord(found):04X}"
        raise InvalidArgument(f"{where} contains an invisible Unicode format character ({code})", field=where)


def _name(sources: Any) -> str | None:
    full, where = _first(sources, ("name",))
    if full is not None:
        return _name_text(full, where)
    first, first_at = _first(sources, ("firstName", "firstname", "first_name"))
    last, last_at = _first(sources, ("lastName", "lastname", "last_name"))
    parts = [
        _name_text(first, first_at) if first is not None else None,
        _name_text(last, last_at) if last is not None else None,
    ]
    joined = " ".join(p for p in parts if p)
    return joined or None


def _name_text(value: Any, where: str) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string, not {_js_type(value)}", field=where)
    value = " ".join(value.split())  # collapse newlines and runs of blanks
    if _CONTROL.search(value):
        raise InvalidArgument(f"{where} contains control characters", field=where)
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"{where} is longer than {MAX_NAME} characters", field=where)
    _no_format_characters(value, where)
    return value or None


def _event_name(value: Any, where: str) -> str:
    if value is None or value == "":
        raise InvalidArgument(f"{where} is required for a track: the event name", field=where)
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string, not {_js_type(value)}", field=where)
    if len(value) > MAX_EVENT_NAME or _CONTROL.search(value):
        raise InvalidArgument(f"{where} must be at most {MAX_EVENT_NAME} printable characters", field=where)
    _no_format_characters(value, where)
    return value


def _short_text(value: Any, where: str) -> str:
    value = value or ""
    if len(value) > MAX_ID or _CONTROL.search(value):
        raise InvalidArgument(f"{where} must be at most {MAX_ID} printable characters", field=where)
    _no_format_characters(value, where)
    return str(value)


def _id_text(value: Any, where: str) -> str:
    """userId and friends: RudderStack allows numbers; anything else is a mistake."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string, not {_js_type(value)}", field=where)
    return _short_text(value, where)


def _context_external_ids(value: Any, where: str) -> list[tuple[Any, Any, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be a list of {{type, id}}", field=where)
    out = []
    for i, entry in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise InvalidArgument(f"{at} must be an object {{type, id}}", field=at)
        out.append((entry.get("type"), entry.get("id"), at))
    return out


def _external_email(entries: list[tuple[Any, Any, str]]) -> str | None:
    """No e-mail in traits, context.traits or properties: the first external id that is an e-mail.

    RudderStack takes context.externalId[0].id whatever its type, so a trengoChannelId's number could
    become the "e-mail". Here only an id that is an e-mail address counts, and never a trengo* one.
    """
    for kind, raw, _ in entries:
        if isinstance(kind, str) and kind.lower().startswith("trengo"):
            continue
        value = raw.strip() if isinstance(raw, str) else ""
        plain = len(value) <= MAX_IDENTIFIER and not _CONTROL.search(value)
        if plain and not _format_character(value) and _EMAIL.fullmatch(value):
            return value
    return None


def _external_ids(entries: list[tuple[Any, Any, str]]) -> tuple[int | None, int | None]:
    found: dict[str, int] = {}
    for kind, raw, where in entries:
        if kind not in (CHANNEL_ID_TYPE, CONTACT_ID_TYPE):
            _near_miss(kind, f"{where}.type")
            continue  # other destinations' ids travel in the same list
        number = _positive_id(raw, f"{where}.id")
        if found.setdefault(kind, number) != number:
            raise InvalidArgument(f"{where} gives a second, different {kind}", field=f"{where}.id")
    return found.get(CHANNEL_ID_TYPE), found.get(CONTACT_ID_TYPE)


def _near_miss(kind: Any, where: str) -> None:
    """``trengoChannelID``: meant for us, but ignored it would send the event to the default channel."""
    if not isinstance(kind, str):
        return
    for known in (CHANNEL_ID_TYPE, CONTACT_ID_TYPE):
        if kind.strip().casefold() == known.casefold():
            raise InvalidArgument(
                f"{where} {kind[:40]!r} is not a type the sidecar knows: did you mean {known}?", field=where
            )


def _positive_id(raw: Any, where: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    elif isinstance(raw, str) and raw.strip().isdigit() and raw.strip().isascii() and len(raw.strip()) <= 19:
        number = int(raw.strip())  # 19 digits: past that, int() is slow or refuses, and it is over 2^63
    else:
        raise InvalidArgument(f"{where} must be a positive integer id, not {str(raw)[:40]!r}", field=where)
    if not 0 < number < 2**63:
        raise InvalidArgument(f"{where} must be a positive integer id below 2^63", field=where)
    return number

"""Phone numbers as Trengo keeps them: parsed with ``phonenumbers`` (Google's libphonenumber). Pure, no I/O.

Trengo stores a phone contact's ``phone`` in E.164 (``+31612345678``) and its ``identifier`` and
``formatted_phone`` in the international format (``+31 6 12345678``); its search matches a term
against those fields (docs/trengo-api.md gives the sources). An app that writes numbers nationally
(``06 12345678``) or in several spellings must still reach one contact, so with ``defaultPhoneRegion``
set every phone the sidecar handles is reduced to its E.164 form first, and that form is the person:
the contact cache and store key, the person lock, the queue's person key, the identifier a create
sends. The search term is the E.164 digits without the ``+``: a substring of Trengo's ``phone`` and
the digits of its ``identifier``, so it finds the contact under either reading of the captures.

Without a region nothing here applies and the sidecar behaves as the reference destination does
(the phone as the event gives it): parity holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from ..errors import InvalidArgument


def region(value: str | None) -> str | None:
    """The configured region as phonenumbers names it (``nl`` -> ``NL``); ValueError if it is none."""
    if value is None or not value.strip():
        return None
    code = value.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(
            f"{value.strip()[:20]!r} is not an ISO 3166 alpha-2 region phonenumbers knows (e.g. NL, DE, GB)"
        )
    return code


def international(raw: str) -> bool:
    """Whether the number carries its country: a ``+`` or an international ``00`` prefix."""
    text = raw.strip().lstrip("(").strip()
    return text.startswith("+") or text.startswith("00")


def e164(raw: str, default_region: str, field: str = "traits.phone") -> str:
    """The number's E.164 form. ``+`` and ``00`` numbers are international whatever the region;
    others are read in ``default_region``. A number phonenumbers calls impossible (or cannot read)
    is the caller's mistake: INVALID_ARGUMENT naming the field and the region. A possible number
    that no operator has been assigned (``is_valid_number`` false) is accepted: numbering plans
    change faster than the library's metadata, and Trengo, not the sidecar, decides what it can reach.
    """
    number, where = _parse(raw, default_region, field)
    if not phonenumbers.is_possible_number(number):
        raise InvalidArgument(
            f"{field} {raw[:40]!r} is not a possible phone number {where}", field=field
        )
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))


def _parse(raw: str, default_region: str, field: str) -> tuple[Any, str]:
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]  # "00" is international in the sense, whatever the region's own prefix
    is_international = text.startswith("+") or text.lstrip("(").startswith("+")
    where = "(international)" if is_international else f"in region {default_region} (defaultPhoneRegion)"
    try:
        number = phonenumbers.parse(text, None if is_international else default_region)
    except NumberParseException as exc:
        raise InvalidArgument(
            f"{field} {raw[:40]!r} is not a phone number {where}: {exc._msg}", field=field
        ) from None
    if is_international:
        country = phonenumbers.region_code_for_number(number) or f"+{number.country_code}"
        where = f"for its country code +{number.country_code} ({country})"
    return number, where


def same_number(value: Any, wanted: str, default_region: str) -> bool:
    """Whether a contact's ``phone`` or ``identifier`` is the number ``wanted`` (E.164), read with the
    same region; anything unreadable (an e-mail, a name) is simply not it."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        number, _ = _parse(value, default_region, "")
    except InvalidArgument:
        return False
    return bool(phonenumbers.format_number(number, PhoneNumberFormat.E164) == wanted)


def is_person(contact: Mapping[str, Any], wanted: str, default_region: str) -> bool:
    """A found contact is the person when its ``phone`` or its ``identifier`` parses to ``wanted``.
    A name or e-mail that merely contains the digits never matches: those fields are not read."""
    return any(same_number(contact.get(key), wanted, default_region) for key in ("phone", "identifier"))


def search_term(wanted: str) -> str:
    """The term a search sends: the E.164 digits without the ``+`` (no URL-encoding question either)."""
    return wanted.lstrip("+")


def cache_key(wanted: str) -> str:
    """The contact cache and store key, the person lock's name: ``p:+<E.164 digits>``.

    Earlier versions keyed a phone ``p:<digits of the number as given>``; a key with ``+`` was never
    written, so a record from before the upgrade is simply never read: a miss, which searches Trengo
    again (and finds the contact there) rather than trusting an entry made under another spelling.
    """
    return "p:" + wanted


def formatted(wanted: str) -> str:
    """The international format Trengo shows (``+31 6 12345678``): for the simulator and the docs."""
    number = phonenumbers.parse(wanted, None)
    return str(phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL))

"""sidecar/plan/phones.py with the real phonenumbers: spellings, search terms, matching, refusals."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import InvalidArgument
from sidecar.plan import phones

# The spellings of one Dutch mobile number, and one more an app might send.
NL_SPELLINGS = [
    "06 12345678", "(06) 1234-5678", "0031 6 12345678", "+31612345678", "+31 6 12345678", "06-12345678",
]


@pytest.mark.parametrize("spelling", NL_SPELLINGS)
def test_every_spelling_of_a_dutch_number_is_one_person_under_nl(spelling):
    assert phones.e164(spelling, "NL") == "+31612345678"
    assert phones.cache_key(phones.e164(spelling, "NL")) == "p:+31612345678"


def test_international_numbers_ignore_the_region():
    assert phones.e164("+44 20 7946 0958", "NL") == "+442079460958"
    assert phones.e164("0044 20 7946 0958", "US") == "+442079460958"  # 00 is international, even in the US
    assert phones.e164("020 7946 0958", "GB") == "+442079460958"


def test_search_term_is_the_e164_digits_without_the_plus():
    assert phones.search_term("+31612345678") == "31612345678"


@pytest.mark.parametrize(
    ("raw", "wording"),
    [
        ("0612", "in region NL"),
        ("+31 612", "country code +31 (NL)"),
        ("+31 6", "(international)"),
        ("not a number", "in region NL"),
        ("+999 1234567", "(international)"),
    ],
)
def test_an_impossible_number_is_invalid_argument_naming_field_and_region(raw, wording):
    with pytest.raises(InvalidArgument) as caught:
        phones.e164(raw, "NL", "context.traits.phone")
    assert caught.value.field == "context.traits.phone"
    assert "context.traits.phone" in caught.value.message and wording in caught.value.message


def test_a_possible_but_unassigned_number_is_accepted():
    number = phonenumbers.parse("+31 69 1234567", None)  # 06-9x: a possible length, no operator
    assert phonenumbers.is_possible_number(number) and not phonenumbers.is_valid_number(number)
    assert phones.e164("06 91234567", "NL") == "+31691234567"


@pytest.mark.parametrize(
    ("contact", "found"),
    [
        ({"phone": "+31612345678", "identifier": "+31 6 12345678"}, True),  # as the C# capture stores it
        ({"phone": "+31 6 12345678", "identifier": "+31 6 12345678"}, True),  # as RudderStack's mocks do
        ({"phone": None, "identifier": "06 12345678"}, True),  # a national identifier, read in NL
        # Digits that begin with the region's own country code: libphonenumber reads them as such
        # (Trengo's custom fields hold phones so, e.g. "972545614020" in the capture).
        ({"phone": "31612345678"}, True),
        ({"phone": "612345678"}, True),  # a national number without its trunk 0
        ({"phone": "0612345679"}, False),
        ({"name": "31612345678", "email": "31612345678@example.com", "identifier": "x@example.com"}, False),
        ({"phone": "+31612345679", "identifier": "+31 6 12345679"}, False),
        ({"phone": 31612345678, "identifier": ["+31612345678"]}, False),  # not text: not read
    ],
)
def test_a_found_contact_is_the_person_only_when_its_phone_or_identifier_parses_to_the_number(contact, found):
    assert phones.is_person(contact, "+31612345678", "NL") is found


def test_region_is_matched_case_insensitively_and_checked():
    assert phones.region(" nl ") == "NL" and phones.region(None) is None and phones.region("") is None
    with pytest.raises(ValueError, match="ISO 3166"):
        phones.region("Netherlands")
    with pytest.raises(ValueError):
        phones.region("XX")


def test_formatted_is_the_international_form_trengo_shows():
    assert phones.formatted("+972545614020") == "+972 54-561-4020"  # the captured identifier


regions = st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS))
separators = st.sampled_from(["", " ", "-", ".", " - "])


@settings(max_examples=200, deadline=None)
@given(region=regions, sep=separators, data=st.data())
def test_any_spelling_of_an_example_number_has_one_identity(region, sep, data):
    example = phonenumbers.example_number(region)
    if example is None:
        return
    wanted = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
    intl = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    spelled = data.draw(st.sampled_from([national, intl, wanted, "00" + wanted[1:], intl.replace(" ", sep)]))
    assert phones.e164(spelled, region) == wanted
    # The search term finds it under either reading of Trengo's fields, and the match accepts both.
    term = phones.search_term(wanted)
    assert term in wanted and term == "".join(ch for ch in intl if ch.isdigit())
    assert phones.is_person({"phone": wanted}, wanted, region)
    assert phones.is_person({"identifier": intl}, wanted, region)


@settings(max_examples=200, deadline=None)
@given(raw=st.text(max_size=40), region=regions)
def test_anything_is_an_e164_number_or_a_named_refusal(raw, region):
    try:
        value = phones.e164(raw, region, "traits.phone")
    except InvalidArgument as exc:
        assert exc.field == "traits.phone"
        return
    assert value.startswith("+") and value[1:].isdigit()
    assert phones.e164(value, region) == value  # E.164 is a fixed point

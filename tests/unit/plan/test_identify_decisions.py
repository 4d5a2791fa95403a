"""The pure decisions behind identify's calls (issue 13), and the setting that turns the name skip off."""

from __future__ import annotations

import pytest

from sidecar.config.load import build_config, load_config
from sidecar.errors import ConfigError
from sidecar.plan import transform as tf
from sidecar.state import ContactRecord
from sidecar.trengo_api.answers import record_name

BASE = {"apiToken": "t0k3n", "channelId": 405980}


def test_only_email_channels_create_before_searching():
    assert tf.creates_first("email")
    assert not tf.creates_first("phone")  # Trengo duplicates phone numbers


@pytest.mark.parametrize(
    ("known", "wanted", "skip", "writes"),
    [
        ("Ann", "Ann", True, False),  # the name it has: no call
        ("Ann", "Ann Lee", True, True),
        (None, "Ann", True, True),  # not known: write it
        ("Ann", None, True, False),  # no name in the event: nothing to write
        (None, None, True, False),
        ("Ann", "Ann", False, True),  # skipUnchangedNames off
        ("Ann", None, False, False),  # ... still never an empty name
        ("ann", "Ann", True, True),  # a name is compared exactly
    ],
)
def test_writes_name(known, wanted, skip, writes):
    assert tf.writes_name(known, wanted, skip) is writes


def test_a_create_refused_over_its_identifier_is_taken_for_an_existing_address():
    assert tf.refused_as_existing(422, frozenset({"identifier"}))
    assert tf.refused_as_existing(422, frozenset({"identifier", "name"}))
    assert not tf.refused_as_existing(422, frozenset({"name"}))
    assert not tf.refused_as_existing(422, frozenset())
    assert not tf.refused_as_existing(409, frozenset({"identifier"}))
    assert not tf.refused_as_existing(400, frozenset({"identifier"}))


def test_matching_record_carries_the_name_the_search_answered():
    found = [
        {"id": 1, "identifier": "joann@x.io", "name": "Jo"},  # a fuzzy hit, not the person
        {"id": 2, "identifier": "Ann@x.io", "name": "Ann Lee"},
    ]
    assert tf.matching_record(found, "ann@x.io", "email") == ContactRecord(2, "Ann Lee")
    for nameless in ({"id": 3, "identifier": "a@x.io"}, {"id": 3, "identifier": "a@x.io", "name": 7}):
        assert tf.matching_record([nameless], "a@x.io", "email") == ContactRecord(3, None)
    assert tf.matching_record(found, "bob@x.io", "email") is None


def test_record_name_reads_a_contact_answer_wrapped_or_not():
    assert record_name({"id": 5, "name": "Ann"}) == "Ann"
    assert record_name({"data": {"id": 5, "name": "Ann"}}) == "Ann"
    assert record_name({"id": 5}) is None
    assert record_name({"id": 5, "name": None}) is None
    assert record_name({"data": []}) is None


def test_contact_records_are_small_and_frozen():
    record = ContactRecord(90002431001, "Ann")
    assert not hasattr(record, "__dict__")  # slots: the cache holds 100,000 of them
    with pytest.raises(AttributeError):
        record.name = "Bo"  # type: ignore[misc]


def test_skip_unchanged_names_defaults_on_and_is_set_by_key_or_env():
    assert build_config(BASE).skip_unchanged_names is True
    assert build_config({**BASE, "skipUnchangedNames": False}).skip_unchanged_names is False
    env = {"TRENGO_API_TOKEN": "t", "TRENGO_CHANNEL_ID": "1", "SIDECAR_SKIP_UNCHANGED_NAMES": "false"}
    assert load_config(None, env=env).skip_unchanged_names is False
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "skipUnchangedNames": "sometimes"})
    assert "skipUnchangedNames" in str(caught.value)

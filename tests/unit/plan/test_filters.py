"""The filters, as pure functions: consent and integrations, and the consent config keys.

The two tables of issue 9 (from rudder-server's own tests of processor/consent.go and
processor/integrations/integrations.go) are here row by row, then cases of our own.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.load import build_config, load_config
from sidecar.errors import ConfigError
from sidecar.plan import filters
from sidecar.plan.events import Event, from_send_event, from_track
from tests.support.harness import struct
from trengo.sidecar.v1 import sidecar_pb2 as pb

DENIED = ["foo-1", "foo-2", "foo-3"]
BASE = {"apiToken": "t", "channelId": 1}


def config(**keys: Any) -> Any:
    return build_config({**BASE, **keys})


def one_trust(*ids: str) -> list[dict[str, str]]:
    return [{"oneTrustCookieCategory": i} for i in ids]


def ketch(*ids: str) -> list[dict[str, str]]:
    return [{"purpose": i} for i in ids]


def entry(provider: str, *ids: str, strategy: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"provider": provider, "consents": [{"consent": i} for i in ids]}
    if strategy is not None:
        out["resolutionStrategy"] = strategy
    return out


def consent(provider: str | None = None, strategy: str | None = None, denied: Any = DENIED) -> dict[str, Any]:
    out: dict[str, Any] = {"deniedConsentIds": denied, "allowedConsentIds": ["foo-4"]}
    if provider is not None:
        out["provider"] = provider
    if strategy is not None:
        out["resolutionStrategy"] = strategy
    return out


def event(consent_management: Any = None, integrations: Any = None) -> Event:
    return Event(
        kind="identify",
        email="ann@example.com",
        consent=consent_management,
        integrations={} if integrations is None else integrations,
    )


# --- consent: issue 9's table --------------------------------------------------------------

CONSENT_VECTORS = [
    # (event's context.consentManagement, destination config, delivered?)
    (None, {"oneTrustCookieCategories": one_trust("foo")}, True),
    (consent(), {"oneTrustCookieCategories": one_trust("foo-4")}, True),
    (consent(), {"oneTrustCookieCategories": one_trust("foo-1")}, False),
    (consent(), {"oneTrustCookieCategories": one_trust("foo-1", "foo-4")}, False),
    (consent(), {"oneTrustCookieCategories": one_trust("foo-1", "foo-2", "foo-3")}, False),
    (
        consent(),
        {"consentManagement": {"provider": "oneTrust"}, "oneTrustCookieCategories": one_trust("foo-4")},
        True,
    ),
    (consent(), {"ketchConsentPurposes": ketch("foo-4")}, True),
    (consent(), {"ketchConsentPurposes": ketch("foo-1", "foo-4")}, True),
    (consent(), {"ketchConsentPurposes": ketch("foo-1")}, False),
    (consent(), {"ketchConsentPurposes": ketch("foo-1", "foo-2", "foo-3")}, False),
    (consent("oneTrust", "and"), {"consentManagement": [entry("oneTrust", "foo-1", "foo-4")]}, False),
    (consent("oneTrust", "and"), {"consentManagement": [entry("ketch", "foo-1", "foo-4")]}, True),
    (consent("ketch", "or"), {"consentManagement": [entry("ketch", "foo-1", "foo-4")]}, True),
    (consent("ketch", "or"), {"consentManagement": [entry("ketch", "foo-1")]}, False),
    (
        consent("ketch", "or"),
        {"consentManagement": [entry("ketch", "foo-1")], "ketchConsentPurposes": ketch("foo-5")},
        False,
    ),
    (consent("ketch", "or"), {"oneTrustCookieCategories": one_trust("foo-1", "foo-2")}, True),
    (consent("custom"), {"consentManagement": [entry("custom", "foo-1", "foo-4", strategy="and")]}, False),
    (
        consent("custom", "or"),
        {"consentManagement": [entry("custom", "foo-1", "foo-4", strategy="or")]},
        True,
    ),
    (consent("custom", "or"), {"ketchConsentPurposes": ketch("foo-1")}, True),
    (consent(denied="dummy"), {"oneTrustCookieCategories": one_trust("foo-1")}, True),
]


@pytest.mark.parametrize(("given", "keys", "delivered"), CONSENT_VECTORS)
def test_consent_vectors_from_rudder_server(given, keys, delivered):
    found = filters.check(event(given), config(**keys))
    assert (found is None) == delivered, found
    if found is not None:
        assert found.rule == filters.CONSENT and found.reason.startswith("consent denied: foo-")


# --- consent: our own cases -----------------------------------------------------------------


def test_the_reason_names_the_denied_consents_in_config_order():
    keys = {"oneTrustCookieCategories": one_trust("foo-4", "foo-3", "foo-1")}
    assert filters.filtered_reason(event(consent()), config(**keys)) == "consent denied: foo-3, foo-1"
    keys = {"consentManagement": [entry("ketch", "foo-2", "foo-1")]}
    assert filters.filtered_reason(event(consent("ketch", "or")), config(**keys)) == (
        "consent denied: foo-2, foo-1"
    )


def test_custom_takes_the_strategy_of_the_config_and_others_that_of_the_event():
    # custom: the config says "and", the event "or": "and" rules, one denied consent drops
    keys = {"consentManagement": [entry("custom", "foo-1", "foo-4", strategy="and")]}
    assert filters.check(event(consent("custom", "or")), config(**keys)) is not None
    # custom: the config says "or", the event nothing: "or" rules, foo-4 is not denied, deliver
    keys = {"consentManagement": [entry("custom", "foo-1", "foo-4", strategy="or")]}
    assert filters.check(event(consent("custom")), config(**keys)) is None
    # ketch: the config's "or" is not looked at; the event's "and" rules
    keys = {"consentManagement": [entry("ketch", "foo-1", "foo-4", strategy="or")]}
    assert filters.check(event(consent("ketch", "and")), config(**keys)) is not None
    assert filters.check(event(consent("ketch", "or")), config(**keys)) is None


@pytest.mark.parametrize("strategy", ["", "and", "AND", "OR", "either", None])
def test_any_strategy_but_or_drops_on_one_denied_consent(strategy):
    keys = {"consentManagement": [entry("iubenda", "foo-1", "foo-4")]}
    assert filters.check(event(consent("iubenda", strategy)), config(**keys)) is not None


@pytest.mark.parametrize("provider", ["custom", "iubenda", "OneTrust", "KETCH", "other"])
def test_other_providers_never_fall_back_to_the_legacy_keys(provider):
    keys = {"oneTrustCookieCategories": one_trust("foo-1"), "ketchConsentPurposes": ketch("foo-1")}
    assert filters.check(event(consent(provider)), config(**keys)) is None


def test_provider_names_match_case_sensitively_in_consent_management():
    keys = {"consentManagement": [entry("oneTrust", "foo-1")]}
    assert filters.check(event(consent("onetrust")), config(**keys)) is None
    assert filters.check(event(consent("oneTrust")), config(**keys)) is not None


def test_one_trust_decides_alone_when_it_is_configured():
    # no provider: oneTrust (nothing denied) decides, even though ketch's purposes are all denied
    keys = {"oneTrustCookieCategories": one_trust("foo-4"), "ketchConsentPurposes": ketch("foo-1")}
    assert filters.check(event(consent()), config(**keys)) is None
    # the ketch provider skips the oneTrust key
    assert filters.check(event(consent("ketch")), config(**keys)) is not None


def test_an_entry_for_another_provider_does_not_hide_the_legacy_keys():
    keys = {"consentManagement": [entry("ketch", "foo-4")], "oneTrustCookieCategories": one_trust("foo-2")}
    assert filters.check(event(consent("oneTrust")), config(**keys)) is not None


@pytest.mark.parametrize(
    "given",
    [
        None,
        "oneTrust",
        ["foo-1"],
        {"provider": "oneTrust"},
        consent(denied=None),
        consent(denied=[]),
        consent(denied=["", ""]),
        consent(denied={"foo-1": True}),
        consent(denied=["foo-1", 5]),  # not an array of strings: no denied consents
        consent(denied=["foo-1", None]),
    ],
)
def test_without_denied_consents_everything_is_delivered(given):
    keys = {"oneTrustCookieCategories": one_trust("foo-1"), "consentManagement": [entry("custom", "foo-1")]}
    assert filters.check(event(given), config(**keys)) is None


def test_empty_strings_among_the_denied_ids_are_ignored():
    keys = {"ketchConsentPurposes": ketch("foo-1")}
    assert filters.check(event(consent(denied=["", "foo-1", ""])), config(**keys)) is not None


def test_allowed_consent_ids_are_never_used():
    given = {"deniedConsentIds": ["foo-1"], "allowedConsentIds": ["foo-1"]}
    assert filters.check(event(given), config(oneTrustCookieCategories=one_trust("foo-1"))) is not None


def test_a_provider_that_is_not_a_string_counts_as_none():
    given = {"provider": 7, "deniedConsentIds": ["foo-1"]}
    assert filters.check(event(given), config(oneTrustCookieCategories=one_trust("foo-1"))) is not None


def test_no_consent_config_delivers_everything():
    assert filters.check(event(consent()), config()) is None


# --- integrations: issue 9's table -------------------------------------------------------------

INTEGRATIONS_VECTORS = [
    ({}, True),
    ({"All": True}, True),
    ({"All": False}, False),
    ({"All": False, "Trengo": True}, True),
    ({"All": True, "Trengo": False}, False),
    ({"All": False, "TRENGO": True}, False),
    ({"All": False, "Trengo": {}}, True),
    ({"All": "true"}, False),
    (None, False),  # null
]


@pytest.mark.parametrize(("integrations", "delivered"), INTEGRATIONS_VECTORS)
def test_integrations_vectors_from_rudder_server(integrations, delivered):
    found = filters.check(Event(kind="track", integrations=integrations), config())
    assert (found is None) == delivered, found
    if found is not None:
        assert found.rule == filters.INTEGRATIONS and found.reason.startswith("integrations")


def test_integrations_absent_from_a_send_event_counts_as_empty():
    parsed = from_send_event(pb.SendEventRequest(event=struct({"type": "identify"})))
    assert parsed.integrations == {}
    assert filters.check(parsed, config()) is None


@pytest.mark.parametrize(
    ("integrations", "reason"),
    [
        (None, "integrations is null"),
        ([], "integrations is not an object"),
        ("Trengo", "integrations is not an object"),
        ({"All": None}, "integrations.All is not a boolean"),
        ({"All": 0}, "integrations.All is not a boolean"),
        ({"All": False}, "integrations.All is false"),
        ({"Trengo": False}, "integrations.Trengo is false"),
        ({"All": False, "Trengo": None}, "integrations.All is false"),
        ({"All": False, "Trengo": "true"}, "integrations.All is false"),
        ({"All": False, "Trengo": []}, "integrations.All is false"),
    ],
)
def test_integrations_reasons(integrations, reason):
    assert filters.filtered_reason(Event(kind="track", integrations=integrations), config()) == reason


@pytest.mark.parametrize("value", [None, "yes", 1, [], {"enabled": True}])
def test_a_trengo_value_of_another_kind_falls_back_to_all(value):
    assert filters.check(Event(kind="track", integrations={"Trengo": value}), config()) is None


def test_null_integrations_in_a_send_event_are_kept_as_null_and_dropped():
    parsed = from_send_event(pb.SendEventRequest(event=struct({"type": "identify", "integrations": None})))
    assert filters.filtered_reason(parsed, config()) == "integrations is null"


def test_integrations_come_before_consent():
    both = Event(kind="track", integrations={"All": False}, consent=consent())
    found = filters.check(both, config(oneTrustCookieCategories=one_trust("foo-1")))
    assert found == filters.Filtered(filters.INTEGRATIONS, "integrations.All is false")


def test_typed_requests_carry_the_context_consent():
    request = pb.TrackRequest(event="Checked Out", context=struct({"consentManagement": consent("ketch")}))
    parsed = from_track(request)
    assert parsed.consent == consent("ketch") and parsed.integrations == {}
    assert filters.check(parsed, config(ketchConsentPurposes=ketch("foo-2"))) is not None


def test_a_send_event_carries_its_context_consent():
    data = {"type": "track", "event": "Checked Out", "context": {"consentManagement": consent()}}
    parsed = from_send_event(pb.SendEventRequest(event=struct(data)))
    assert filters.filtered_reason(parsed, config(oneTrustCookieCategories=one_trust("foo-3"))) == (
        "consent denied: foo-3"
    )


# --- the config keys -----------------------------------------------------------------------------


def test_config_keys_parse_into_immutable_values():
    c = config(
        consentManagement=[
            entry("ketch", "a", "", "b", strategy="or"),
            entry("", "c"),  # no provider: does not count
            entry("custom", ""),  # no non-empty consent: does not count
            {"provider": "iubenda"},  # no consents at all
        ],
        oneTrustCookieCategories=one_trust("", "C0004", "C0002"),
        ketchConsentPurposes=[{"purpose": ""}, {}, {"purpose": None}],
    )
    assert dict(c.consent_management) == {"ketch": filters.ConsentEntry("or", ("a", "b"))}
    assert c.one_trust_cookie_categories == ("C0004", "C0002")
    assert c.ketch_consent_purposes == ()
    with pytest.raises(TypeError):
        c.consent_management["x"] = filters.ConsentEntry("", ("y",))


def test_a_later_entry_for_a_provider_replaces_an_earlier_one():
    entries = [entry("ketch", "a"), entry("ketch", "b", strategy="or"), entry("ketch", "")]
    c = config(consentManagement=entries)
    assert dict(c.consent_management) == {"ketch": filters.ConsentEntry("or", ("b",))}


@pytest.mark.parametrize("value", [{"provider": "ketch"}, "", None, 5])
def test_a_consent_management_that_is_not_a_list_is_ignored(value):
    assert dict(config(consentManagement=value).consent_management) == {}


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"consentManagement": ["ketch"]}, "consentManagement[0]"),
        ({"consentManagement": [{"provider": 5, "consents": []}]}, "consentManagement[0].provider"),
        ({"consentManagement": [{"provider": "k", "consents": "a"}]}, "consentManagement[0].consents"),
        ({"consentManagement": [{"provider": "k", "consents": ["a"]}]}, "consentManagement[0].consents[0]"),
        (
            {"consentManagement": [entry("k", "a"), {"provider": "k", "consents": [{"consent": 1}]}]},
            "consentManagement[1].consents[0].consent",
        ),
        ({"consentManagement": [{"provider": "k", "resolutionStrategy": True}]},
         "consentManagement[0].resolutionStrategy"),
        ({"oneTrustCookieCategories": {"oneTrustCookieCategory": "C1"}}, "oneTrustCookieCategories"),
        ({"oneTrustCookieCategories": ["C0004"]}, "oneTrustCookieCategories[0]"),
        ({"ketchConsentPurposes": [{"purpose": 3}]}, "ketchConsentPurposes[0].purpose"),
        ({"ketchConsentPurposes": "[not json"}, "ketchConsentPurposes"),
    ],
)
def test_a_wrong_type_inside_the_consent_keys_fails_at_start_up_naming_it(keys, named):
    with pytest.raises(ConfigError) as caught:
        config(**keys)
    assert caught.value.key == named


def test_the_consent_keys_come_from_the_environment_as_json():
    c = load_config(
        env={
            "TRENGO_API_TOKEN": "t",
            "TRENGO_CHANNEL_ID": "1",
            "TRENGO_CONSENT_MANAGEMENT": '[{"provider": "custom", "resolutionStrategy": "or",'
            ' "consents": [{"consent": "C1"}, {"consent": "C2"}]}]',
            "TRENGO_ONE_TRUST_COOKIE_CATEGORIES": '[{"oneTrustCookieCategory": "C0004"}]',
            "TRENGO_KETCH_CONSENT_PURPOSES": '[{"purpose": "analytics"}]',
        }
    )
    assert dict(c.consent_management) == {"custom": filters.ConsentEntry("or", ("C1", "C2"))}
    assert c.one_trust_cookie_categories == ("C0004",)
    assert c.ketch_consent_purposes == ("analytics",)


def test_a_consent_key_from_the_environment_that_is_not_json_names_the_key():
    env = {"TRENGO_API_TOKEN": "t", "TRENGO_CHANNEL_ID": "1", "TRENGO_ONE_TRUST_COOKIE_CATEGORIES": "C0004"}
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    assert caught.value.key == "oneTrustCookieCategories"


def test_a_rudderstack_export_with_consent_keys_loads_from_yaml(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "Config:\n"
        "  apiToken: t\n"
        "  channelId: 1\n"
        "  oneTrustCookieCategories:\n"
        "    - oneTrustCookieCategory: C0004\n"
        "    - oneTrustCookieCategory: ''\n"
        "  consentManagement:\n"
        "    - provider: ketch\n"
        "      resolutionStrategy: ''\n"
        "      consents:\n"
        "        - consent: analytics\n"
    )
    c = load_config(path, env={})
    assert c.one_trust_cookie_categories == ("C0004",)
    assert dict(c.consent_management) == {"ketch": filters.ConsentEntry("", ("analytics",))}

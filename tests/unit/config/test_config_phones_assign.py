"""Config of issue 20: defaultPhoneRegion, assignTo and defaultAssignTo (file, env, --check-config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config.load import build_config, load, load_config
from sidecar.config.report import check_config
from sidecar.errors import ConfigError
from sidecar.plan.followup_plan import AssignTo

ENV = {"TRENGO_API_TOKEN": "t", "TRENGO_CHANNEL_ID": "405981"}


def test_the_region_is_read_case_insensitively_from_the_env_and_printed_with_its_origin():
    env = {**ENV, "TRENGO_DEFAULT_PHONE_REGION": " nl "}
    loaded = load(env=env)
    assert loaded.config.default_phone_region == "NL"
    assert "defaultPhoneRegion: NL  # env TRENGO_DEFAULT_PHONE_REGION" in check_config(loaded).splitlines()


def test_no_region_is_the_default_and_keeps_the_reference_behaviour():
    loaded = load(env=ENV)
    assert loaded.config.default_phone_region == ""
    assert "defaultPhoneRegion: ''  # default" in check_config(loaded).splitlines()


@pytest.mark.parametrize("value", ["Netherlands", "XX", "31"])
def test_a_region_phonenumbers_does_not_know_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError) as caught:
        load_config(env={**ENV, "TRENGO_DEFAULT_PHONE_REGION": value})
    [problem] = caught.value.problems
    assert problem.key == "defaultPhoneRegion" and "ISO 3166" in problem.problem
    assert problem.origin == "env TRENGO_DEFAULT_PHONE_REGION"


def test_assign_to_per_entry_and_a_default_from_a_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "apiToken: t\nchannelId: 405980\n"
        "defaultAssignTo: {user: agent@example.com}\n"
        "eventTemplateMap:\n"
        "  - {from: Refund Requested, to: '', assignTo: {team: Support}}\n"
        "  - {from: Invoice Paid, to: '', assignTo: {team: 12}}\n"
        "  - {from: Checked Out, to: ''}\n"
    )
    loaded = load(path, env={})
    extras = loaded.config.event_extras
    assert extras["Refund Requested"].assign_to == AssignTo("team", "Support")
    assert extras["Invoice Paid"].assign_to == AssignTo("team", 12)  # an id: no look-up
    assert "Checked Out" not in extras
    assert loaded.config.default_assign_to == AssignTo("user", "agent@example.com")
    text = check_config(loaded)
    printed = yaml.safe_load(text)
    assert printed["defaultAssignTo"] == {"user": "agent@example.com"}
    assert [line for line in text.splitlines() if line.startswith("defaultAssignTo:")] == [
        f"defaultAssignTo:  # file {path}"
    ]
    assert printed["eventTemplateMap"][:2] == [
        {"from": "Refund Requested", "to": "", "assignTo": {"team": "Support"}},
        {"from": "Invoice Paid", "to": "", "assignTo": {"team": 12}},
    ]


def test_default_assign_to_from_the_env_is_json():
    config = load_config(env={**ENV, "TRENGO_DEFAULT_ASSIGN_TO": '{"team": "Support"}'})
    assert config.default_assign_to == AssignTo("team", "Support")


@pytest.mark.parametrize(
    ("value", "key", "says"),
    [
        ({"team": ""}, "eventTemplateMap[0].assignTo.team", "non-empty"),
        ({"user": "bob"}, "eventTemplateMap[0].assignTo.user", "e-mail"),
        ({"team": "a", "user": "b@x.io"}, "eventTemplateMap[0].assignTo", "team"),
        ({"group": "a"}, "eventTemplateMap[0].assignTo", "team"),
        ("Support", "eventTemplateMap[0].assignTo", "JSON"),
    ],
)
def test_a_bad_assign_to_names_the_key(value, key, says):
    raw = {"apiToken": "t", "channelId": 1, "eventTemplateMap": [{"from": "A", "to": "", "assignTo": value}]}
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    [problem] = caught.value.problems
    assert problem.key == key and says in problem.problem, problem

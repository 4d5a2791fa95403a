"""Config: file, env and flags merge into one frozen object; bad config names the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.config import build_config, load_config
from sidecar.errors import ConfigError

BASE = {"apiToken": "t0k3n", "channelId": 405980}


def test_defaults():
    config = build_config(BASE)
    assert config.channel_identifier == "auto" and config.enable_dedup is True
    assert config.base_url == "https://app.trengo.com/api/v2" and config.listen == "127.0.0.1:50051"
    assert config.rate_limit_per_minute == 120


def test_rudderstack_config_pastes_as_is(tmp_path: Path):
    rudder = {
        "Config": {
            "apiToken": "t0k3n",
            "channelId": "405980",
            "channelIdentifier": "email",
            "enableDedup": False,
            "eventTemplateMap": [{"from": "Product Purchased", "to": "{{ event }} from our store"}],
        }
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(rudder))
    config = load_config(path, env={})
    assert config.channel_id == 405980 and not config.enable_dedup
    assert list(config.event_templates) == ["Product Purchased"]


def test_yaml_then_env_then_flags(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("apiToken: from-file\nchannelId: 1\nlisten: 127.0.0.1:1\n")
    env = {
        "TRENGO_CHANNEL_ID": "2",
        "SIDECAR_LISTEN": "127.0.0.1:2",
        "TRENGO_ENABLE_DEDUP": "false",
        "TRENGO_EVENT_TEMPLATE_MAP": '[{"from": "A", "to": "{{event}}"}]',
    }
    config = load_config(path, env=env, overrides={"listen": "127.0.0.1:3"})
    assert (config.channel_id, config.listen, config.enable_dedup) == (2, "127.0.0.1:3", False)
    assert "A" in config.event_templates


def test_token_file(tmp_path: Path):
    secret = tmp_path / "token"
    secret.write_text("from-secret\n")
    config = load_config(None, env={"TRENGO_API_TOKEN_FILE": str(secret), "TRENGO_CHANNEL_ID": "1"})
    assert config.api_token.reveal() == "from-secret"


def test_token_never_shows_in_repr():
    config = build_config(BASE)
    assert "t0k3n" not in repr(config) and "t0k3n" not in str(config.api_token)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"apiToken": "t"}, "channelId"),
        ({"channelId": 1}, "apiToken"),
        ({**BASE, "channelId": "abc"}, "channelId"),
        ({**BASE, "channelId": 1.5}, "channelId"),
        ({**BASE, "channelIdentifier": "sms"}, "channelIdentifier"),
        ({**BASE, "enableDedup": "maybe"}, "enableDedup"),
        ({**BASE, "eventTemplateMap": "not json"}, "eventTemplateMap"),
        ({**BASE, "eventTemplateMap": [{"to": "x"}]}, "eventTemplateMap[0]"),
        ({**BASE, "eventTemplateMap": [{"from": "A", "to": "{{#if}}"}]}, "eventTemplateMap[0].to"),
        ({**BASE, "eventTemplateMap": [{"from": "A"}, {"from": "A"}]}, "eventTemplateMap[1]"),
        ({**BASE, "baseUrl": "ftp://x"}, "baseUrl"),
        ({**BASE, "maxAttempts": 0}, "maxAttempts"),
        ({**BASE, "rateLimitPerMinute": -1}, "rateLimitPerMinute"),
        ({**BASE, "apiTokn": "x"}, "apiTokn"),
        ({**BASE, "tlsCertFile": "/nope.pem"}, "tlsCertFile"),
        ({"channelId": 1, "apiTokenFile": "/no/such/file"}, "apiTokenFile"),
        ({**BASE, "logFormat": "xml"}, "logFormat"),
    ],
)
def test_bad_config_names_the_key(raw, key):
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    assert caught.value.key == key
    assert "t0k3n" not in str(caught.value)


def test_empty_template_means_no_subject_but_event_is_mapped():
    config = build_config({**BASE, "eventTemplateMap": [{"from": "A", "to": ""}]})
    assert config.event_templates["A"].source == ""


def test_a_later_source_token_replaces_an_earlier_token_file(tmp_path: Path):
    secret = tmp_path / "token"
    secret.write_text("from-file")
    path = tmp_path / "c.yaml"
    path.write_text(f"apiTokenFile: {secret}\nchannelId: 1\n")
    assert load_config(path, env={}).api_token.reveal() == "from-file"
    assert load_config(path, env={"TRENGO_API_TOKEN": "from-env"}).api_token.reveal() == "from-env"
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"TRENGO_API_TOKEN": "a", "TRENGO_API_TOKEN_FILE": str(secret)})
    assert caught.value.key == "apiToken"

"""Config: file, env and flags merge into one frozen object; bad config names the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sidecar.config.load import (
    _KEYS,
    EMPTY_MAP_WARNING,
    ENV_ALIASES,
    ENV_VARS,
    IGNORED_KEYS,
    KNOWN_ENV,
    TEMPLATE_ENTRY_KEYS,
    build_config,
    load,
    load_config,
)
from sidecar.config.report import check_config, file_value
from sidecar.config.sources import unknown_env
from sidecar.errors import ConfigError
from tests.support.harness import pieces

BASE = {"apiToken": "t0k3n", "channelId": 405980}
ENV = {"TRENGO_API_TOKEN": "t0k3n", "TRENGO_CHANNEL_ID": "405980"}


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


# --- parse errors: file, line, column, and never the text (issue 10, item 2) -------------------------------

LONG_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.c2VjcmV0"


@pytest.mark.parametrize("token", [LONG_TOKEN, "Zq7"])
def test_an_unterminated_yaml_token_is_named_by_position_never_quoted(tmp_path: Path, token: str):
    path = tmp_path / "sidecar.yaml"
    path.write_text(f'channelId: 1\napiToken: "{token}\nlisten: 127.0.0.1:1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "line 2, column 11" in message, message
    assert not [piece for piece in pieces(token) if piece in message], message


def test_a_broken_json_file_gives_line_and_column_and_no_value(tmp_path: Path):
    path = tmp_path / "sidecar.json"
    path.write_text('{"channelId": 1,\n "apiToken": "Zq7secret\n}')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == f"{path}:2:24" and "Zq7" not in str(caught.value)


def test_a_broken_json_env_value_names_the_variable_and_position_and_no_value():
    env = {**ENV, "TRENGO_EVENT_TEMPLATE_MAP": '[{"from": "Zq7secret}]'}
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    message = str(caught.value)
    assert "eventTemplateMap (env TRENGO_EVENT_TEMPLATE_MAP)" in message and "line 1, column 11" in message
    assert "Zq7" not in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("channelId", "Zq7x"), ("enableDedup", "Zq7x"), ("logLevel", "Zq7x"), ("metricsListen", "Zq7x")],
)
def test_a_bad_value_is_never_quoted_back(key: str, value: str):
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, key: value})
    assert caught.value.key == key and "Zq7" not in str(caught.value)


def test_an_unquoted_yaml_template_gets_the_hint_to_quote_it(tmp_path: Path):
    path = tmp_path / "sidecar.yaml"
    path.write_text("apiToken: t\nchannelId: 1\neventTemplateMap:\n  - from: A\n    to: {{ event }}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "found unhashable key" in str(caught.value) and "quote templates" in str(caught.value)
    assert caught.value.key == f"{path}:5:10"


# --- eventTemplateMap mistakes (item 8) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "key", "says"),
    [
        ([{"from": "A", "to": "a"}, {"from": "B", "too": "b"}], "eventTemplateMap[1]", "unknown key 'too'"),
        ([{"from": "A", "to": "a"}, {"to": "b"}], "eventTemplateMap[1]", "non-empty string 'from'"),
        ([{"from": "  ", "to": "b"}], "eventTemplateMap[0]", "non-empty string 'from'"),
        ([{"from": "A", "to": {"event": None}}], "eventTemplateMap[0].to", "quote it"),
    ],
)
def test_a_bad_template_entry_names_its_index(entries, key, says):
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "eventTemplateMap": entries})
    assert caught.value.key == key and says in str(caught.value), str(caught.value)


def test_the_entry_keys_allowed_are_one_constant():
    assert set(TEMPLATE_ENTRY_KEYS) == {"from", "to", "note", "labels", "assignTo"}  # issues 15, 20


def test_an_empty_template_map_is_a_start_up_warning():
    assert EMPTY_MAP_WARNING in load(env=ENV).warnings
    mapped = {**ENV, "TRENGO_EVENT_TEMPLATE_MAP": '[{"from": "A", "to": ""}]'}
    assert EMPTY_MAP_WARNING not in load(env=mapped).warnings


# --- every problem at once, naming the env variable (item 9) ------------------------------------------------


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        load_config(env={})
    assert [p.key for p in caught.value.problems] == ["channelId", "apiToken"]
    with pytest.raises(ConfigError) as caught:
        build_config({"channelIdentifier": "sms", "maxAttempts": 0, "logLevel": "loud"})
    keys = {p.key for p in caught.value.problems}
    assert keys == {"channelIdentifier", "maxAttempts", "logLevel", "channelId", "apiToken"}


def test_a_bad_value_is_reported_once_not_again_as_missing(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        build_config({"apiTokenFile": str(tmp_path / "missing"), "channelId": "abc"})
    assert [p.key for p in caught.value.problems] == ["apiTokenFile", "channelId"]
    # the file the pod could not read, by its path
    named = f"cannot read the secret file {tmp_path / 'missing'}: No such file"
    assert named in caught.value.problems[0].line()


def test_a_negative_channel_id_from_env_must_be_a_positive_integer():
    with pytest.raises(ConfigError) as caught:
        load_config(env={**ENV, "TRENGO_CHANNEL_ID": "-1"})
    assert str(caught.value) == (
        "channelId (env TRENGO_CHANNEL_ID): must be a positive integer (the id of the Trengo channel)"
    )


def test_an_error_in_a_value_from_env_or_a_flag_names_where_it_came_from():
    with pytest.raises(ConfigError) as caught:
        load_config(env={**ENV, "TRENGO_ENABLE_DEDUP": "maybe"}, overrides={"listen": "nowhere"})
    lines = [p.line() for p in caught.value.problems]
    assert lines == [
        "enableDedup (env TRENGO_ENABLE_DEDUP): must be true or false",
        "listen (flag --listen): must be HOST:PORT or unix:///path",
    ]


# --- flags and env alike, aliases, unknown variables (item 10) ----------------------------------------------


def test_choices_are_accepted_in_any_case_from_every_source(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("channelIdentifier: EMAIL\n")
    env = {**ENV, "SIDECAR_LOG_FORMAT": "JSON"}
    config = load_config(path, env=env, overrides={"logLevel": "info"})
    assert (config.channel_identifier, config.log_format, config.log_level) == ("email", "json", "INFO")


def test_the_rate_limit_has_a_sidecar_alias_and_two_names_at_once_are_refused():
    assert load_config(env={**ENV, "SIDECAR_RATE_LIMIT_PER_MINUTE": "60"}).rate_limit_per_minute == 60
    both = {**ENV, "SIDECAR_RATE_LIMIT_PER_MINUTE": "60", "TRENGO_RATE_LIMIT_PER_MINUTE": "60"}
    with pytest.raises(ConfigError) as caught:
        load_config(env=both)
    assert caught.value.key == "rateLimitPerMinute" and "give one" in str(caught.value)


def test_an_unknown_trengo_or_sidecar_variable_is_warned_about_with_a_guess():
    warnings = load(env={**ENV, "TRENGO_CHANEL_ID": "5", "SIDECAR_NOPE": "1", "OTHER_X": "1"}).warnings
    guess = "unknown environment variable TRENGO_CHANEL_ID (did you mean TRENGO_CHANNEL_ID?): it is ignored"
    assert guess in warnings
    assert any(w.startswith("unknown environment variable SIDECAR_NOPE") for w in warnings)
    assert not any("OTHER_X" in w or "5" in w for w in warnings)


def test_the_known_variables_are_derived_from_the_key_table():
    # a key added to the table (SIDECAR_STORE, the consent keys...) is known with no other change
    assert set(ENV_VARS) == {env for _attr, env in _KEYS.values()} and set(ENV_VARS) <= KNOWN_ENV
    assert unknown_env({env: "1" for env in (*ENV_VARS, *ENV_ALIASES, "TRENGO_SIM_TOKENS")}, KNOWN_ENV) == []


# --- RudderStack's own Trengo config pastes (item 7) --------------------------------------------------------


def test_every_key_of_rudderstacks_trengo_destination_pastes(tmp_path: Path):
    # destConfig of rudder-integrations-config's trengo/db-config.json (consent keys aside: the filters
    # issue), plus the live-events flags RudderStack's control plane adds to every destination's Config
    exported = {
        "ID": "2abc", "Name": "Trengo prod", "Enabled": True,
        "Config": {
            "apiToken": "t0k3n", "channelId": "405980", "channelIdentifier": "email", "enableDedup": True,
            "eventTemplateMap": [{"from": "Product Purchased", "to": "{{ event }} from our store"}],
            "connectionMode": {"web": "cloud", "cloud": "cloud"},
            "eventDelivery": False, "eventDeliveryTS": 1668424218224,
        },
    }  # fmt: skip
    path = tmp_path / "trengo.json"
    path.write_text(json.dumps(exported))
    loaded = load(path, env={})
    assert loaded.config.channel_id == 405980
    assert loaded.ignored == ("connectionMode", "eventDelivery", "eventDeliveryTS")
    assert set(loaded.ignored) == set(IGNORED_KEYS)


# --- TLS files that are not PEM (item 6) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tls import make_ca, make_cert
    directory = tmp_path_factory.mktemp("certs")
    make_ca(directory, "ca")
    make_ca(directory, "other")
    make_cert(directory, "server", "ca", "subjectAltName=IP:127.0.0.1\n")
    (directory / "junk.pem").write_text("not a pem file: Zq7secret\n")
    (directory / "broken.crt").write_text("-----BEGIN CERTIFICATE-----\nZq7=\n-----END CERTIFICATE-----\n")
    return directory


@pytest.mark.parametrize(
    ("cert", "key", "ca", "bad"),
    [
        ("junk.pem", "server.key", "", "tlsCertFile"),
        ("broken.crt", "server.key", "", "tlsCertFile"),
        ("server.crt", "junk.pem", "", "tlsKeyFile"),
        ("server.crt", "other.key", "", "tlsKeyFile"),  # a PEM key, but not the certificate's
        ("server.crt", "server.key", "junk.pem", "tlsClientCaFile"),
    ],
)
def test_a_tls_file_that_does_not_load_is_named(certs: Path, cert: str, key: str, ca: str, bad: str):
    raw = {**BASE, "tlsCertFile": str(certs / cert), "tlsKeyFile": str(certs / key)}
    if ca:
        raw["tlsClientCaFile"] = str(certs / ca)
    with pytest.raises(ConfigError) as caught:
        build_config(raw)
    assert [p.key for p in caught.value.problems] == [bad] and "Zq7" not in str(caught.value)


def test_good_tls_files_pass(certs: Path):
    names = {"tlsCertFile": "server.crt", "tlsKeyFile": "server.key", "tlsClientCaFile": "ca.crt"}
    config = build_config({**BASE, **{key: str(certs / name) for key, name in names.items()}})
    assert config.tls_client_ca_file.endswith("ca.crt")


# --- --check-config: the file's keys, masked secrets, origins (item 11) -------------------------------------


def test_check_config_prints_a_config_file_with_origins(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "apiToken: t0k3n\nconnectionMode: {web: cloud}\n"
        "eventTemplateMap:\n  - from: Added to cart\n    to: 'Product was of value:{{ revenue }}'\n"
    )
    env = {"TRENGO_CHANNEL_ID": "405980", "SIDECAR_STORE_TYPO": "x"}
    text = check_config(load(path, env=env, overrides={"logLevel": "debug", "listen": None}))
    assert "t0k3n" not in text
    printed = yaml.safe_load(text)
    assert set(printed) == set(_KEYS) - {"apiTokenFile", "authTokenFile", "writeKeysFile", "authToken"}
    assert "# authToken: not set  # default" in text.splitlines()  # a blank one would not load again
    assert printed["apiToken"] == "****" and printed["channelId"] == 405980
    [entry] = printed["eventTemplateMap"]
    assert entry == {"from": "Added to cart", "to": "Product was of value:{{ revenue }}"}
    lines = text.splitlines()
    assert "apiToken: '****'  # file " + str(path) in lines
    assert "channelId: 405980  # env TRENGO_CHANNEL_ID" in lines
    assert "logLevel: DEBUG  # flag --log-level" in lines
    assert "listen: 127.0.0.1:50051  # default" in lines
    assert any(line.startswith("# ignored: connectionMode") for line in lines)
    assert any(line.startswith("# warning: unknown environment variable SIDECAR_STORE_T") for line in lines)


def test_check_config_masks_a_password_in_a_url():
    assert file_value("postgresql://app:Zq7secret@db:5432/sidecar") == "postgresql://app:****@db:5432/sidecar"


def test_check_config_prints_a_structured_value_as_given_not_as_parsed():
    env = {**ENV, "TRENGO_ONE_TRUST_COOKIE_CATEGORIES": '[{"oneTrustCookieCategory": "C0001"}]'}
    printed = yaml.safe_load(check_config(load(env=env)))
    assert printed["oneTrustCookieCategories"] == [{"oneTrustCookieCategory": "C0001"}]
    assert printed["ketchConsentPurposes"] == []  # a default: as parsed


def test_two_ways_of_giving_one_token_are_reported_with_the_other_problems(tmp_path: Path):
    secret = tmp_path / "token"
    secret.write_text("from-file")
    path = tmp_path / "c.yaml"
    path.write_text(f"apiToken: t\napiTokenFile: {secret}\n")
    env = {"SIDECAR_RATE_LIMIT_PER_MINUTE": "1", "TRENGO_RATE_LIMIT_PER_MINUTE": "2"}
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    assert [p.key for p in caught.value.problems] == ["rateLimitPerMinute", "apiToken", "channelId"]


@pytest.mark.parametrize(
    "text",
    ["apiToken: *Zq7alias\n", "apiToken: [Zq7secret\n", "apiToken: !Zq7tag x\n", "apiToken: Zq7: x: y\n"],
)
def test_no_yaml_error_quotes_the_text(tmp_path: Path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}:") and "Zq7" not in str(caught.value), str(caught.value)


def test_check_config_shows_the_store_url_with_its_password_masked():
    env = {**ENV, "SIDECAR_STORE": "postgresql://app:Zq7secret@db:5432/sidecar"}
    text = check_config(load(env=env))
    assert "store: postgresql://app:****@db:5432/sidecar  # env SIDECAR_STORE" in text.splitlines()
    assert "Zq7" not in text

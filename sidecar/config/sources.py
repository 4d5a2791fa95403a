"""Where config values come from (the file, the environment, flags), and what went wrong reading them.

Parse errors name the file or the variable, the line and the column, and never quote the text: a
config holds the API token, and PyYAML's own message prints the line it failed on.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

QUOTE_HINT = "quote templates in YAML, as in to: '{{ event }}' (unquoted, {{ ... }} is a YAML mapping)"
# PyYAML quotes a token kind ('<scalar>') or a single character ('\t' escaped) in its problems;
# anything longer might be the text itself, so it is left out.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def close_match(word: str, options: Iterable[str]) -> str:
    """' (did you mean X?)' for a near miss among ``options``, else ''."""
    found = difflib.get_close_matches(word, list(options), n=1, cutoff=0.8)
    return f" (did you mean {found[0]}?)" if found else ""


def read_file(path: Path) -> dict[str, Any]:
    """The settings in a JSON (``.json``) or YAML file, unwrapped from RudderStack's ``{"Config": ...}``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start})") from None
    data = _json_file(path, text) if path.suffix == ".json" else _yaml_file(path, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"must hold a mapping of keys, not {type(data).__name__}")
    # RudderStack exports wrap the settings in {"Config": {...}}; accept that as is.
    if isinstance(data.get("Config"), dict):
        data = data["Config"]
    return data


def _json_file(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}", f"not valid JSON: {exc.msg}") from None


def _yaml_file(path: Path, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(path, text, exc) from None
    except yaml.YAMLError:
        raise ConfigError(str(path), "not valid YAML") from None


def _yaml_error(path: Path, text: str, exc: yaml.MarkedYAMLError) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    problem = _unquoted(exc.problem or "")
    if exc.context:  # "while scanning a quoted scalar" (started at line, column): "found ..."
        started = exc.context_mark
        at = f" (line {started.line + 1}, column {started.column + 1})" if started else ""
        problem = f"{_unquoted(exc.context)}{at}: {problem}"
    lines = text.splitlines()
    line = lines[mark.line] if mark and mark.line < len(lines) else ""
    if "unhashable" in problem or "{{" in line:
        problem += f"; {QUOTE_HINT}"
    return ConfigError(where, f"not valid YAML: {problem.strip()}")


def _unquoted(message: str) -> str:
    def keep(found: re.Match[str]) -> str:
        inner = found.group()[1:-1]
        keeps = len(inner) <= 1 or re.fullmatch(r"<[\w ]+>|\\\w{1,4}", inner)  # 'x', '<scalar>', '\\t'
        return found.group() if keeps else "'...'"

    return _QUOTED.sub(keep, message)


def json_value(key: str, text: str) -> Any:
    """A JSON value given as text (an env variable): errors give line and column, never the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise ConfigError(key, f"not valid JSON at {where}: {exc.msg}") from None


def env_values(
    env: Mapping[str, str], names: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str], list[ConfigError]]:
    """The file keys set by environment variables (``names``: variable -> key), where each came from,
    and the keys set by two variables at once."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    problems: list[ConfigError] = []
    for var, key in names.items():
        if env.get(var, "") == "":
            continue
        if key in values:
            other = origins[key].removeprefix("env ")
            problems.append(ConfigError(key, f"set by both {other} and {var}: give one of them"))
            continue
        values[key], origins[key] = env[var], f"env {var}"
    return values, origins, problems


def unknown_env(env: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """A warning for each TRENGO_*/SIDECAR_* variable nothing reads (a typo the sidecar would ignore)."""
    known = set(known)
    return [
        f"unknown environment variable {name}{close_match(name, known)}: it is ignored"
        for name in sorted(env)
        if name.startswith(("TRENGO_", "SIDECAR_")) and name not in known
    ]

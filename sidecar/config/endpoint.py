"""What a caller of the sidecar reads of its config: where it listens, its caller token, its TLS.

``trengo-sidecar deliveries --config sidecar.yaml`` reads the sidecar's own file (and the same
SIDECAR_* variables) through the sidecar's own merge and parsers, but only these keys: an operator's
shell needs neither the Trengo token nor the store's password to reach the queue, so the keys a
caller has no use for are neither read nor checked (an unreadable ``apiTokenFile`` is no error here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigError
from .load import Config, _located, merge, parse_values
from .values import Secret, _is_host_port

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}
CALLER_KEYS = ("listen", "authToken", "authTokenFile", "tlsCertFile", "tlsKeyFile", "tlsClientCaFile")


@dataclass(frozen=True)
class Endpoint:
    """The sidecar's API listener as a caller sees it."""

    listen: str
    auth_token: Secret
    tls_cert_file: str  # the sidecar serves TLS with this certificate ("" = plaintext)
    tls_client_ca_file: str  # the sidecar asks callers for a certificate from this CA ("" = it does not)

    @property
    def target(self) -> str:
        """The address to dial: a wildcard listener (0.0.0.0, [::]) is reached on loopback."""
        host, _, port = self.listen.rpartition(":")
        if self.listen.startswith("unix:") or host not in _WILDCARDS:
            return self.listen
        return f"{_WILDCARDS[host]}:{port}"


def load_endpoint(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Endpoint:
    """The caller's keys from ``path`` (the sidecar's config file, if given) and the environment."""
    env = os.environ if env is None else env
    raw, origins, problems = merge(path, env)
    problems = [p for p in problems if p.key in CALLER_KEYS]  # another key's clash is the sidecar's
    values, problems = parse_values({k: v for k, v in raw.items() if k in CALLER_KEYS}, problems)
    config = Config(**values)
    if not (config.listen.startswith("unix:") or _is_host_port(config.listen)):
        problems.append(ConfigError("listen", "must be HOST:PORT or unix:///path"))
    if problems:
        raise ConfigError.many([_located(p, origins) for p in problems])
    return Endpoint(config.listen, config.auth_token, config.tls_cert_file, config.tls_client_ca_file)

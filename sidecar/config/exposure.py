"""Who can reach what: the checks that refuse a careless setup at start (issue 22).

- The API (``listen``) on an address other than loopback needs caller auth: ``authToken`` (or
  ``authTokenFile``) or mTLS (``tlsClientCaFile``). Without either, anyone who reaches the port opens
  tickets on the company's token and reads names through ListDeliveries. ``allowUnauthenticated: true``
  says it is on purpose (a NetworkPolicy the operator trusts); it still gets a loud warning.
- ``healthListen`` serves grpc.health.v1 alone, so kubelet can probe the pod address while the API
  stays on loopback; it must not share the API's address.
- ``baseUrl`` over plain http:// to a host other than loopback would send the Trengo token in clear;
  ``allowInsecureTrengo: true`` allows it (a TLS-terminating egress proxy on the node, say).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost; 0.0.0.0, [::], a pod IP or any other name is not."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listens_on_loopback(listen: str) -> bool:
    """A unix socket is reachable only through the file system: as private as loopback."""
    if listen.startswith("unix:"):
        return True
    host, _, _ = listen.rpartition(":")
    return is_loopback_host(host)


def has_caller_auth(c: Any) -> bool:
    return bool(c.auth_token) or bool(c.tls_client_ca_file)


def _well_formed(listen: str) -> bool:
    """Checked (and reported) elsewhere; a malformed address is not reported twice."""
    host, _, port = listen.rpartition(":")
    return listen.startswith("unix:") or (bool(host) and port.isdigit())


def problems(c: Any) -> Iterator[ConfigError]:
    exposed = _well_formed(c.listen) and not listens_on_loopback(c.listen)
    if exposed and not has_caller_auth(c) and not c.allow_unauthenticated:
        yield ConfigError(
            "listen",
            f"{c.listen} is reachable from outside the pod, and no caller auth is set: anyone who reaches it "
            "could send events on the Trengo token and read deliveries. Set authToken (or authTokenFile) "
            "or tlsClientCaFile (mTLS), listen on 127.0.0.1, or set allowUnauthenticated: true on purpose",
        )
    if c.health_listen and c.health_listen == c.listen:
        yield ConfigError("healthListen", "must differ from listen (it serves grpc.health.v1 alone)")
    parts = urlsplit(c.base_url)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or "") and not c.allow_insecure_trengo:
        yield ConfigError(
            "baseUrl",
            "is http:// to a host other than loopback: the Trengo token would cross the network in clear. "
            "Use https://, or set allowInsecureTrengo: true on purpose",
        )


def warnings(c: Any) -> list[str]:
    """Said at start (and by --check-config) when a setup is open on purpose."""
    found = []
    if not listens_on_loopback(c.listen) and not has_caller_auth(c):
        found.append(
            f"UNAUTHENTICATED API on {c.listen} (allowUnauthenticated: true): anyone who reaches this "
            "port can send events on the company's Trengo token and read names and e-mails through "
            "ListDeliveries; only a NetworkPolicy stands in the way"
        )
    parts = urlsplit(c.base_url)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
        found.append(f"the Trengo token travels in clear to {parts.hostname} (allowInsecureTrengo: true)")
    return found

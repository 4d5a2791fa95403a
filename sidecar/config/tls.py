"""The TLS files checked at start-up: PEM, loadable, and a key that fits its certificate.

grpc only reads them when it binds, and then says "Failed to bind" whatever was wrong; Python's ssl
module (the same OpenSSL family) loads them here first so the error names the config key. File
contents are never quoted: a key file is a secret.
"""

from __future__ import annotations

import ssl
from collections.abc import Generator, Iterator
from pathlib import Path

from ..errors import ConfigError

_CERT_BLOCK = "-----BEGIN CERTIFICATE-----"


def tls_problems(cert_file: str, key_file: str, ca_file: str) -> Iterator[ConfigError]:
    """A ConfigError per unusable file; the files exist (checked before)."""
    cert_ok = not cert_file or (yield from _certificates("tlsCertFile", cert_file))
    if key_file:
        if "PRIVATE KEY-----" not in _text(key_file):
            yield ConfigError("tlsKeyFile", "is not a PEM private key (no BEGIN ... PRIVATE KEY block)")
        elif cert_ok and cert_file:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
            except ssl.SSLError as exc:
                yield ConfigError(
                    "tlsKeyFile",
                    f"does not load with tlsCertFile ({exc.reason or 'unreadable'}): a PEM key, "
                    "unencrypted, that belongs to the certificate",
                )
    if ca_file:
        yield from _certificates("tlsClientCaFile", ca_file)


def _certificates(key: str, path: str) -> Generator[ConfigError, None, bool]:
    """Yields a problem if ``path`` holds no loadable PEM certificate; returns whether it is fine."""
    if _CERT_BLOCK not in _text(path):
        yield ConfigError(key, f"is not a PEM certificate (no {_CERT_BLOCK} block)")
        return False
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        yield ConfigError(key, f"holds a PEM certificate that does not load ({exc.reason or 'unreadable'})")
        return False
    return True


def _text(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("ascii", errors="replace")
    except OSError:
        return ""

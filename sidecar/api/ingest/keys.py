"""Write keys: which configured key a request carries, compared in constant time.

RudderStack's SDKs send the key as HTTP Basic auth (the key as the user name, an empty password);
Segment's analytics-python sends it in the JSON body as ``writeKey``. A key is never logged,
answered, labelled or traced: what the rest of the ingest sees is its index (``#0``, ``#1``...).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence

from ...config.values import Secret


class WriteKeys:
    def __init__(self, keys: Sequence[Secret]) -> None:
        self._keys = [key.reveal().encode() for key in keys]

    def match(self, given: str | None) -> int | None:
        """The index of the configured key ``given`` is, or None.

        Every key is compared, whatever matched, so the time taken does not tell which one did or how
        much of a key was right (hmac.compare_digest is constant-time for equal lengths).
        """
        if not given:
            return None
        candidate = given.encode("utf-8", "surrogateescape")
        found = None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(candidate, key) and found is None:
                found = index
        return found


def basic_user(header: str | None) -> str | None:
    """The user name of a ``Basic`` Authorization header (the write key), or None if it has none."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]

"""What the contact cache keeps for one identifier."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ContactRecord:
    """A Trengo contact as far as the sidecar knows it.

    ``name`` is the name the sidecar last wrote to the contact or read from Trengo (None: not
    known), so an identify with that same name needs no call. It lives as long as the cache
    entry (``contactCacheTtlSeconds``): a name changed by hand in Trengo is overwritten by the
    next identify after that at the latest. Slots: 100,000 of these sit in the cache.
    """

    contact_id: int
    name: str | None = None

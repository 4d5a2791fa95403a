"""Consent settings and an event context that denies some of them, shared by the filter tests."""

from __future__ import annotations

from typing import Any

from tests.support.harness import struct

CONSENT = {
    "oneTrustCookieCategories": [{"oneTrustCookieCategory": "C0004"}],
    "consentManagement": [
        {"provider": "ketch", "resolutionStrategy": "", "consents": [{"consent": "a"}, {"consent": "b"}]}
    ],
}


DENIED = {"deniedConsentIds": ["C0002", "C0004"], "provider": "oneTrust", "resolutionStrategy": "and"}


REASON = "consent denied: C0004"


def context(consent: dict[str, Any], email: str = "ann@example.com") -> Any:
    return struct({"traits": {"email": email}, "consentManagement": consent})

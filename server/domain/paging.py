"""AIP-158 pagination: page sizes and opaque page tokens bound to the filters they came with."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from .validation import Violations

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "decode_token", "encode_token", "page_size"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int, violations: Violations) -> int:
    if requested < 0:
        violations.add("page_size", f"must not be negative, got {requested}")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(filters: object) -> str:
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:16]


def encode_token(last_id: int, filters: object) -> str:
    """Keyset cursor: the last id of this page, so rows inserted meanwhile never shift pages."""
    raw = json.dumps({"after": last_id, "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, filters: object, violations: Violations) -> int | None:
    """The id to continue after, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after = data["after"]
        fingerprint = data["f"]
        if not isinstance(after, int) or isinstance(after, bool) or after <= 0:
            raise ValueError
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        violations.add("page_token", "is not a page token this service issued")
        return None
    if fingerprint != _fingerprint(filters):
        violations.add("page_token", "was issued for different filters; start again without it")
        return None
    return after

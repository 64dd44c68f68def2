"""AIP-158 pagination: page sizes and opaque page tokens bound to the filters they came with."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from .validation import MAX_ITEMS_PER_ORDER, Violations

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_ITEMS",
    "MAX_PAGE_SIZE",
    "decode_token",
    "encode_token",
    "page_size",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# A page of orders ends early, after whole orders, once it holds this many items: 500 orders
# of 1,000 items would be a 40 MB message, above grpcio's 4 MiB default for a client and
# Envoy's buffer for transcoding. 5,000 items of the longest kind are about 0.7 MB as
# protobuf. A page always holds at least one whole order.
MAX_PAGE_ITEMS = 5_000
assert MAX_PAGE_ITEMS >= MAX_ITEMS_PER_ORDER


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
